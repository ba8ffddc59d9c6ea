//! Harness for black-box tests that start real `starling` processes.
