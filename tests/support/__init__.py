"""What the tests import: real data's whereabouts, DICOM and bundle makers, the project's and dcmtk's commands, real
servers in child processes. Fixtures live in tests/conftest.py."""
