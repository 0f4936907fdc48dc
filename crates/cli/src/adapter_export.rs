//! How a trainer's model becomes the files a user takes elsewhere: the
//! adapters in PEFT's layout, the memory rows and `llm2comp.json`
//! (`llm2comp_backbone::adapter`), written into each checkpoint and, at the
//! end, into the run's output directory.

use llm2comp_backbone::adapter::{self, AdapterMeta};
use llm2comp_compress::{CompressConfig, Exporter};
use llm2comp_train::TrainError;

/// An exporter for a compression run over `base_model` with `cfg`.
pub fn exporter(
    base_model: String,
    max_length: usize,
    cfg: &CompressConfig,
    stage: &str,
) -> Exporter {
    let cfg = cfg.clone();
    let stage = stage.to_string();
    Box::new(move |model, dir| {
        let mut meta = AdapterMeta::new(
            base_model.clone(),
            model,
            cfg.memory_tokens,
            &cfg.lora,
            cfg.train_embeddings,
        );
        meta.max_length = Some(max_length);
        meta.objective = Some(cfg.objective.name().to_string());
        meta.stage = Some(stage.clone());
        adapter::save_adapter(dir, model, &meta).map_err(TrainError::from)
    })
}
