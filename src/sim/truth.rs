//! Ground-truth cost tables: what the simulated GPU's physics says each layer costs, noise-free,
//! in the same [`LayerCostTable`] shape the performance model predicts. Only the offline oracle
//! plans over these; EALI and the baselines see predicted or measured costs.

use crate::eali::costs::LayerCostTable;
use crate::gpu::sim::GpuProfile;
use crate::model::Graph;

/// Noise-free time and energy of every layer of `graph` on `profile` at `batches` × `clocks_mhz`
/// (both ascending). The default power limit caps each layer's clock as the GPU's power
/// controller would; idle power is that of a GPU held at each clock; the per-batch overhead is
/// zero because the simulator's batches have none outside their layers.
pub fn layer_table(
    graph: &Graph,
    profile: &GpuProfile,
    batches: &[u32],
    clocks_mhz: &[u32],
) -> LayerCostTable {
    let limit = profile.spec().power.limit_default_w;
    let curve = profile.physics().curve;
    let n = graph.layers.len();
    let mut time_s = vec![vec![vec![0.0; clocks_mhz.len()]; batches.len()]; n];
    let mut energy_j = time_s.clone();
    for l in 0..n {
        for (bi, &b) in batches.iter().enumerate() {
            let parts = profile.physics().parts(&graph.layer_work(l, b));
            for (fi, &f) in clocks_mhz.iter().enumerate() {
                let (f_eff, _) = profile.power_capped_clock(&parts, f, limit);
                let (t, e) = curve.time_energy(&parts, curve.x(f64::from(f_eff)));
                time_s[l][bi][fi] = t;
                energy_j[l][bi][fi] = e;
            }
        }
    }
    LayerCostTable {
        model: graph.name.clone(),
        gpu: profile.name().to_string(),
        layers: graph.layers.iter().map(|l| l.name.clone()).collect(),
        batches: batches.to_vec(),
        clocks_mhz: clocks_mhz.to_vec(),
        time_s,
        energy_j,
        idle_power_w: clocks_mhz
            .iter()
            .map(|&f| profile.idle_power_w(f))
            .collect(),
        batch_overhead_s: vec![0.0; batches.len()],
    }
}

/// Noise-free time of the whole model per batch size `1..=max_batch` at `f_mhz` (power cap
/// applied to the whole batch, as the GPU applies it to a span).
pub fn batch_times_s(graph: &Graph, profile: &GpuProfile, max_batch: u32, f_mhz: u32) -> Vec<f64> {
    let limit = profile.spec().power.limit_default_w;
    let curve = profile.physics().curve;
    (1..=max_batch)
        .map(|b| {
            let works: Vec<_> = (0..graph.layers.len())
                .map(|l| graph.layer_work(l, b))
                .collect();
            let parts = profile.physics().parts_of(&works);
            let (f_eff, _) = profile.power_capped_clock(&parts, f_mhz, limit);
            curve.time_s(&parts, curve.x(f64::from(f_eff)))
        })
        .collect()
}
