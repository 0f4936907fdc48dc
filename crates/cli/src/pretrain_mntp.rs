//! `llm2comp pretrain --objective mntp`: LLM2Vec's masked next-token
//! prediction on the same corpus, trainer, checkpoints and adapter files as
//! the compression objectives, so the two pretexts are compared at equal
//! compute. Writes a LoRA-only adapter (no memory tokens): embed it with
//! mean pooling, as LLM2Vec does.

use anyhow::{Context, Result, bail};
use llm2comp_compress::mntp::MaskConfig;
use llm2comp_compress::{Corpus, DataOptions, Mntp, MntpTask, Objective, TrainEmbeddings};
use serde_json::json;

use crate::adapter_export::{Provenance, exporter_for};
use crate::pretrain::{Args, DEFAULTS, lora_config};
use crate::texts;

/// Runs `pretrain` with the MNTP objective.
pub fn run(args: &Args, threads: usize) -> Result<()> {
    let t = &args.train;
    if t.device()?.is_cuda() {
        bail!("--device {}: mntp trains on the CPU for now", t.device()?);
    }
    let out = t.out_dir()?;
    if let Some(k) = args.memory_tokens {
        bail!("--memory-tokens {k}: mntp trains no memory tokens (its adapter is LoRA only)");
    }
    if args.train_embeddings != TrainEmbeddings::Memory {
        bail!(
            "--train-embeddings {}: mntp trains the adapters only",
            args.train_embeddings.name()
        );
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !(args.mask_rate > 0.0 && args.mask_rate < 1.0) {
        bail!("--mask-rate {}: give a share in (0, 1)", args.mask_rate);
    }
    let lora = lora_config(args)?;
    let input = texts::read(&args.data, args.format, &args.text_field, true, None)?;
    let (tokenizer, transformer, bos) = crate::train_args::load_base(&args.model)?;
    let mask_id = tokenizer.token_to_id(&args.mask_token).with_context(|| {
        format!(
            "--mask-token {:?} is not one token of {}'s vocabulary; name one that is",
            args.mask_token,
            args.model.display()
        )
    })?;
    let data_opts = DataOptions {
        min_chars: args.min_chars,
        max_tokens: args.max_tokens,
        max_length: args.max_length,
    };
    // `[BOS] text` with no memory tokens: the corpus rc would use with k = 0.
    let corpus = Corpus::build(
        &args.data,
        &input.texts,
        &tokenizer,
        Objective::Rc,
        0,
        &data_opts,
    )?;
    let st = corpus.stats();
    eprintln!(
        "data: {} passages kept of {} ({} tokens; {} cut to --max-length {})",
        st.kept,
        st.read + input.skipped_empty,
        st.tokens,
        st.truncated,
        args.max_length
    );
    let mask = MaskConfig {
        rate: args.mask_rate,
        mask_id,
        vocab: transformer.embedding().base_vocab(),
    };
    let model_name = args.model.display().to_string();
    let exporter = exporter_for(Provenance {
        base_model: model_name.clone(),
        max_length: args.max_length,
        memory_tokens: 0,
        lora: lora.clone(),
        train_embeddings: TrainEmbeddings::Memory,
        objective: "mntp".into(),
        stage: "pretrain".into(),
    });
    let step = Mntp::new(transformer, &lora, t.checkpoint_activations, t.seed)?;
    let task = MntpTask::new(
        step,
        corpus,
        mask,
        bos,
        t.seed,
        args.batch_size,
        t.grad_accum,
    )
    .with_info("base_model", json!(model_name))
    .with_info("max_length", json!(args.max_length))
    .with_info("data", json!(args.data))
    .with_info(
        "lora",
        json!({
            "r": lora.r,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "targets": lora.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
        }),
    );
    let steps = t.steps(|e| task.steps_for_epochs(e))?;
    let mut task = task.with_exporter(exporter);
    let tc = t.config(&out, steps, &DEFAULTS);
    eprintln!(
        "pretrain: objective mntp (mask rate {}, mask token {:?} = id {mask_id}), {steps} steps x \
         {} passages x {} accumulation, lr {} (warm-up {} from {}, {} decay), on cpu with \
         {threads} threads -> {}",
        args.mask_rate,
        args.mask_token,
        args.batch_size,
        t.grad_accum,
        tc.schedule.lr,
        tc.schedule.warmup_steps,
        t.warmup_init_lr,
        t.decay,
        out.display()
    );
    t.run(&mut task, &tc)?;
    Ok(())
}
