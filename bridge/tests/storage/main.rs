//! The store and its writer: sequence, deduplication, queries and rollups, restarts,
//! retention, the disk budget, and the writer's publish-before-flush and acknowledge-after.

mod disk_budget;
mod store;
mod uplink_hold;
mod writer;
