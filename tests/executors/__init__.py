"""Tests of the shipped docker executors: their images, examples and rules."""
