//! Node configuration, start-up and shutdown.
