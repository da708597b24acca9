use eali::perf::fit::{dataset, default_candidates};
use eali::perf::power_model::PowerModel;
use eali::perf::power_model::TrainingSet;
use eali::perf::profile::Profile;
use eali::perf::regress::*;
#[test]
#[ignore]
fn scratch2() {
    let names = ["alexnet", "resnet50", "googlenet", "densenet121", "mobilenet_v2"];
    let profiles: Vec<Profile> = names.iter().map(|n| Profile::load(std::path::Path::new(&format!("/tmp/p/v100-{n}.json"))).unwrap()).collect();
    let ds = dataset(&profiles, 2700, 1).unwrap();
    let mut specs = default_candidates();
    specs.push(RegressorSpec::RandomForest(ForestParams { n_trees: 40, max_depth: 12, min_samples_leaf: 3, mtry: Some(6) }));
    specs.push(RegressorSpec::GradientBoosting(BoostParams { n_trees: 150, learning_rate: 0.1, max_depth: 4, min_samples_leaf: 3, subsample: 0.7 }));
    for s in specs {
        let t = std::time::Instant::now();
        let _m = PowerModel::train("x", 1, vec![], s, 1, TrainingSet { features: ds.features.clone(), power_w: ds.power_w.clone() }).unwrap();
        println!("{:?}: {:.2}s", s, t.elapsed().as_secs_f64());
    }
}
