"""Great Expectations suites, as code, for every batch the pipeline accepts."""
