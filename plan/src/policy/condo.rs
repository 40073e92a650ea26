//! condo's planner (placeholder while the baselines are validated).

use crate::sim::{Policy, Sim};

/// Tuning of the planner.
#[derive(Clone, Debug, Default)]
pub struct Params {}

pub struct Condo {
    #[allow(dead_code)]
    params: Params,
}

impl Condo {
    pub fn new(params: Params) -> Condo {
        Condo { params }
    }
}

impl Policy for Condo {
    fn optimize(&mut self, _sim: &mut Sim, _time: f64) -> Vec<(usize, usize)> {
        Vec::new()
    }
}
