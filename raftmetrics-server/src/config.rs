//! Node configuration (filled in next).
