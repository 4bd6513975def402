"""The authority's side of the federation's certificates: its CA (ca.py) and the enrolment token file
(tokens.py). Only the authority, set-up (hfl provision, hfl demo, hfl enrol-token) and tests use it; the
other services never do (an import contract in pyproject.toml)."""
