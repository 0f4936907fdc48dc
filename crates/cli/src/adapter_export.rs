//! How a trainer's model becomes the files a user takes elsewhere: the
//! adapters in PEFT's layout, the memory rows and `llm2comp.json`
//! (`llm2comp_backbone::adapter`), written into each checkpoint and, at the
//! end, into the run's output directory.

use llm2comp_backbone::LoraConfig;
use llm2comp_backbone::adapter::{self, AdapterMeta};
use llm2comp_compress::{CompressConfig, Exporter, TrainEmbeddings};
use llm2comp_train::TrainError;

/// What an adapter's meta records of the run that trained it.
pub struct Provenance {
    /// The base model as given.
    pub base_model: String,
    /// The run's --max-length.
    pub max_length: usize,
    /// Memory tokens k (0: LoRA only).
    pub memory_tokens: usize,
    /// The adapters.
    pub lora: LoraConfig,
    /// Which embedding rows were trained.
    pub train_embeddings: TrainEmbeddings,
    /// The stage-1 objective (rc, nll, kl, mntp).
    pub objective: String,
    /// The stage (pretrain, ...).
    pub stage: String,
}

/// An exporter writing adapters with metadata `p`.
pub fn exporter_for(p: Provenance) -> Exporter {
    Box::new(move |model, dir| {
        let mut meta = AdapterMeta::new(
            p.base_model.clone(),
            model,
            p.memory_tokens,
            &p.lora,
            p.train_embeddings,
        );
        meta.max_length = Some(p.max_length);
        meta.objective = Some(p.objective.clone());
        meta.stage = Some(p.stage.clone());
        adapter::save_adapter(dir, model, &meta).map_err(TrainError::from)
    })
}

/// An exporter for a compression run over `base_model` with `cfg`.
pub fn exporter(
    base_model: String,
    max_length: usize,
    cfg: &CompressConfig,
    stage: &str,
) -> Exporter {
    exporter_for(Provenance {
        base_model,
        max_length,
        memory_tokens: cfg.memory_tokens,
        lora: cfg.lora.clone(),
        train_embeddings: cfg.train_embeddings,
        objective: cfg.objective.name().to_string(),
        stage: stage.to_string(),
    })
}
