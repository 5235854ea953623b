//! Chat templates (Jinja, as in HF `tokenizer_config.json` or GGUF metadata) rendered with
//! minijinja for a single user message.

use crate::error::{Error, Result};

/// Renders `template` for one user message with the generation prompt appended.
pub fn render_user_prompt(template: &str, prompt: &str, bos: &str, eos: &str) -> Result<String> {
    let bad = |e: minijinja::Error| Error::Value(format!("chat template: {e}"));
    let mut env = minijinja::Environment::new();
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template).map_err(bad)?;
    let ctx = minijinja::context! {
        messages => vec![minijinja::context! { role => "user", content => prompt }],
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    };
    env.get_template("chat")
        .map_err(bad)?
        .render(ctx)
        .map_err(bad)
}
