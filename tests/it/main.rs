//! The workspace's one integration test binary; each module tests one area against real servers.

mod harness; // the throwaway PostgreSQL and Redis launchers themselves
