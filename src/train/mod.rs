//! Analog foundation model training (DESIGN §3.4): synthetic data sampled from the teacher,
//! then hardware-aware distillation into a student whose projections are analog training layers.

pub mod config;
pub mod datagen;
pub mod fused;
pub mod gpu_pool;
pub mod layer;
pub mod ops;
pub mod optim;
pub mod outliers;
pub mod parallel;
pub mod profile;
pub mod range_search;
pub mod rotate;
pub mod shards;
pub mod smooth;
pub mod step_ops;
pub mod student;
pub mod trainer;
