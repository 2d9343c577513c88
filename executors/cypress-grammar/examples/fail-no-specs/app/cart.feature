Feature: cart
  Scenario: empty
    Given an empty cart
