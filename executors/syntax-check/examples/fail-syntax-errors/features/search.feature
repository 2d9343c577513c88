Feature: Searching courses

  Scenario: a course is found by name
    Given the catalogue lists "Compilers"
    When I search for "compilers"
    Then I see one result
    the result links to the course page
