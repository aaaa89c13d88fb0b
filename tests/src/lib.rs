//! Integration tests live in `tests/`; shared helpers go here.
