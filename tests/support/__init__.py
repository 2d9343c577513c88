"""What the tests share: services, doubles, pipelines and helpers. Test modules and
conftest.py files import from here, never from each other."""
