//! Simulators shared library: the wire-level stand-ins (TS source, viewers, BMS clients) used by tests, benches and the demo.
