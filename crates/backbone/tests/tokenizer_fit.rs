//! A model directory's tokenizer must belong to its model: ids past the
//! embedding table, or a tokenizer that would leave most of the table
//! unused (another model's), are refused when the tokenizer is loaded,
//! naming the tokenizer file and both sizes.

mod support;

use llm2comp_backbone::model;
use support::{tmp_dir, write_word_tokenizer};

fn model_dir(name: &str, vocab: usize, tokens: usize) -> std::path::PathBuf {
    let d = tmp_dir(name);
    std::fs::write(
        d.join("config.json"),
        format!(
            r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":16,"intermediate_size":24,
                "num_attention_heads":4,"num_key_value_heads":2,"num_hidden_layers":2,
                "vocab_size":{vocab},"rms_norm_eps":1e-5,"rope_theta":10000.0,
                "max_position_embeddings":128,"tie_word_embeddings":true}}"#
        ),
    )
    .unwrap();
    write_word_tokenizer(&d, tokens);
    d
}

#[test]
fn a_tokenizer_that_does_not_fit_the_vocabulary_is_refused() {
    // Padded a little (as Qwen2 pads 151,665 tokens to 151,936 rows): fine.
    let d = model_dir("tokfit-ok", 64, 40);
    assert_eq!(model::load_tokenizer(&d).unwrap().vocab_size(), 40);
    std::fs::remove_dir_all(&d).unwrap();

    let d = model_dir("tokfit-long", 64, 80);
    let e = model::load_tokenizer(&d).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("ids up to 79") && e.contains("64 rows"),
        "{e}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    let d = model_dir("tokfit-short", 1000, 40);
    let e = model::load_tokenizer(&d).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("40 ids") && e.contains("1000 rows"),
        "{e}"
    );
    assert!(e.contains("another model"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn texts_are_cut_to_what_their_first_tokens_need() {
    let d = model_dir("tokcut", 64, 40);
    let tok = model::load_tokenizer(&d).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
    let keep = tok.cut_bytes(10);
    // Short texts are never cut.
    assert_eq!(tok.cut_for("w3 w4", 10), ("w3 w4", false));
    let long = "w5 ".repeat(keep);
    let (cut, was_cut) = tok.cut_for(&long, 10);
    assert!(was_cut && cut.len() <= keep && long.starts_with(cut));
    // What is kept still holds more than the tokens asked for, and the same first ones.
    let (a, b) = (
        tok.encode(cut, false).unwrap(),
        tok.encode(&long, false).unwrap(),
    );
    assert!(a.len() > 10);
    assert_eq!(a[..10], b[..10]);
    // A cut never splits a character.
    let wide = "é".repeat(keep);
    let (cut, _) = tok.cut_for(&wide, 10);
    assert!(cut.len() <= keep && cut.chars().all(|c| c == 'é'));
}
