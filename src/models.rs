//! The trained models shipped in `weights/` (issue 5), compiled into the native binary so that
//! `flowmap sample` works with no file at hand. The browser fetches the same files through
//! `web/models.json` instead, so the wasm stays small and each model loads only when picked.

use crate::error::{Error, Result};
use crate::weights::Weights;

/// A model compiled into the binary.
pub struct Shipped {
    /// The name `--model` takes.
    pub name: &'static str,
    /// Its file in the repository.
    pub file: &'static str,
    bytes: &'static [u8],
}

impl Shipped {
    pub fn load(&self) -> Result<Weights> {
        Weights::from_bytes(self.bytes)
    }
}

/// `flowmap sample` with neither `--model` nor `--weights` draws from this one.
pub const DEFAULT: &str = "mnist";

pub const SHIPPED: [Shipped; 2] = [
    Shipped {
        name: "mnist",
        file: "weights/mnist.safetensors",
        bytes: include_bytes!("../weights/mnist.safetensors"),
    },
    Shipped {
        name: "checkerboard",
        file: "weights/checkerboard.safetensors",
        bytes: include_bytes!("../weights/checkerboard.safetensors"),
    },
];

/// The shipped model called `name`, or an error listing the names there are.
pub fn find(name: &str) -> Result<&'static Shipped> {
    SHIPPED.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::Argument(format!(
            "no shipped model `{name}`; there are: {}",
            names().join(", ")
        ))
    })
}

pub fn names() -> Vec<&'static str> {
    SHIPPED.iter().map(|m| m.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_model_loads_and_models_its_data_set() {
        for m in &SHIPPED {
            let w = m.load().unwrap_or_else(|e| panic!("{}: {e}", m.name));
            assert_eq!(w.meta.data.name, m.name, "{}", m.file);
            assert!(w.parameter_count() > 0);
        }
        assert!(find(DEFAULT).is_ok());
        let e = find("cifar").err().unwrap().to_string();
        assert!(e.contains("mnist") && e.contains("checkerboard"), "{e}");
    }
}
