//! The model zoo: the usual ImageNet CNNs, built in the IR exactly as torchvision defines them
//! (inference graph: no auxiliary heads, logits out), one file per family. Layer names follow
//! torchvision's module paths, since they become metric labels.

use serde::Serialize;

use super::{Graph, ModelError, Shape};

mod alexnet;
mod densenet;
mod googlenet;
mod inception;
mod mobilenet;
mod resnet;
mod vgg;

/// Published figures for a torchvision model: parameter count and GMACs at batch 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reference {
    /// Trainable parameters of the inference graph.
    pub params: u64,
    /// Multiply-accumulates per image, in 10⁹ (torchvision calls this column "GFLOPS").
    pub gmacs: f64,
}

/// One model of the zoo.
#[derive(Debug, Clone, Copy)]
pub struct ZooEntry {
    pub name: &'static str,
    pub input: Shape,
    pub reference: Reference,
    build: fn() -> Result<Graph, ModelError>,
}

const IMAGENET: Shape = Shape {
    c: 3,
    h: 224,
    w: 224,
};

const fn entry(
    name: &'static str,
    input: Shape,
    params: u64,
    gmacs: f64,
    build: fn() -> Result<Graph, ModelError>,
) -> ZooEntry {
    ZooEntry {
        name,
        input,
        reference: Reference { params, gmacs },
        build,
    }
}

// Reference figures: `num_params` and `GFLOPS` of the IMAGENET1K_V1 weights in the torchvision
// documentation (pytorch.org/vision/stable/models.html). Inception-v3's published count
// (27,161,264) includes the auxiliary classifier of 3,326,696 parameters, which the inference
// graph does not run; the figure here is without it.
const ZOO: [ZooEntry; 9] = [
    entry("alexnet", IMAGENET, 61_100_840, 0.71, alexnet::alexnet),
    entry("vgg16", IMAGENET, 138_357_544, 15.47, vgg::vgg16),
    entry("resnet18", IMAGENET, 11_689_512, 1.81, resnet::resnet18),
    entry("resnet50", IMAGENET, 25_557_032, 4.09, resnet::resnet50),
    entry("resnet152", IMAGENET, 60_192_808, 11.51, resnet::resnet152),
    entry("googlenet", IMAGENET, 6_624_904, 1.50, googlenet::googlenet),
    entry(
        "inception_v3",
        Shape {
            c: 3,
            h: 299,
            w: 299,
        },
        23_834_568,
        5.71,
        inception::inception_v3,
    ),
    entry(
        "densenet121",
        IMAGENET,
        7_978_856,
        2.83,
        densenet::densenet121,
    ),
    entry(
        "mobilenet_v2",
        IMAGENET,
        3_504_872,
        0.30,
        mobilenet::mobilenet_v2,
    ),
];

const NAMES: [&str; 9] = [
    "alexnet",
    "vgg16",
    "resnet18",
    "resnet50",
    "resnet152",
    "googlenet",
    "inception_v3",
    "densenet121",
    "mobilenet_v2",
];

/// Alternative spellings beyond case and separators (those are ignored anyway).
const ALIASES: [(&str, &str); 3] = [
    ("inceptionv1", "googlenet"),
    ("inception3", "inception_v3"),
    ("vgg", "vgg16"),
];

/// Canonical model names, in zoo order.
pub fn names() -> &'static [&'static str] {
    &NAMES
}

/// All zoo entries, in zoo order.
pub fn entries() -> &'static [ZooEntry] {
    &ZOO
}

/// Folds case and drops separators, so "ResNet-50", "resnet_50" and "resnet50" compare equal.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' ' | '.'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The zoo entry for `name` or one of its aliases ("ResNet-50", "inception-v3", "mobilenetv2").
pub fn lookup(name: &str) -> Result<&'static ZooEntry, ModelError> {
    let key = normalise(name);
    let key = ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key.clone(), |(_, target)| normalise(target));
    ZOO.iter()
        .find(|e| normalise(e.name) == key)
        .ok_or_else(|| ModelError::UnknownModel {
            name: name.to_string(),
            known: NAMES.join(", "),
        })
}

/// Canonical name for `name` or an alias.
pub fn canonical_name(name: &str) -> Result<&'static str, ModelError> {
    lookup(name).map(|e| e.name)
}

/// Builds the model called `name` (canonical or alias).
pub fn build(name: &str) -> Result<Graph, ModelError> {
    (lookup(name)?.build)()
}

/// torchvision's published figures for `name`.
pub fn reference(name: &str) -> Result<Reference, ModelError> {
    lookup(name).map(|e| e.reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_entries() {
        let from_entries: Vec<&str> = ZOO.iter().map(|e| e.name).collect();
        assert_eq!(from_entries, names());
    }

    #[test]
    fn aliases_resolve() {
        for (alias, canonical) in [
            ("resnet-50", "resnet50"),
            ("ResNet50", "resnet50"),
            ("RESNET_152", "resnet152"),
            ("inception-v3", "inception_v3"),
            ("InceptionV3", "inception_v3"),
            ("mobilenetv2", "mobilenet_v2"),
            ("MobileNet-V2", "mobilenet_v2"),
            ("DenseNet-121", "densenet121"),
            ("VGG-16", "vgg16"),
            ("GoogLeNet", "googlenet"),
            ("inception-v1", "googlenet"),
            ("AlexNet", "alexnet"),
        ] {
            assert_eq!(canonical_name(alias), Ok(canonical), "{alias}");
        }
    }

    #[test]
    fn unknown_model_lists_the_known_ones() {
        let err = build("resnet-51").unwrap_err();
        match &err {
            ModelError::UnknownModel { name, known } => {
                assert_eq!(name, "resnet-51");
                assert!(known.contains("resnet50") && known.contains("mobilenet_v2"));
            }
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn built_graph_carries_canonical_name_and_input() {
        let g = build("ResNet-18").unwrap();
        assert_eq!(g.name, "resnet18");
        assert_eq!(g.input, Shape::new(3, 224, 224));
        assert_eq!(
            build("inception-v3").unwrap().input,
            Shape::new(3, 299, 299)
        );
    }
}
