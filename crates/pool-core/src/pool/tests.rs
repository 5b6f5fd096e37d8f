//! Tests of the engine's contracts, with the in-memory test manager.
