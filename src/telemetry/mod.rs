//! Telemetry samplers feeding measurement points (placeholder until its issue lands).
