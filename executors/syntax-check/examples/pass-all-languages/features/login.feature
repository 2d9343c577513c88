Feature: Logging in
  A student logs in to see the lab's tasks.

  Background:
    Given the lab "Web engineering" exists

  Scenario Outline: a known user logs in
    Given a user "<user>" with password "<password>"
    When they log in
    Then they see "Welcome, <user>"

    Examples:
      | user | password |
      | ada  | lovelace |
      | alan | turing   |
