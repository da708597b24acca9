//! The model zoo (being built).
