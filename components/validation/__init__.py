"""The validate stage: runs the Great Expectations suites in data_checks/ on a snapshot and
quarantines what fails."""
