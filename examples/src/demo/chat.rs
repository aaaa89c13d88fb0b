//! The chat template from the GGUF metadata (`tokenizer.chat_template`), rendered with
//! minijinja; ChatML (`<|im_start|>role\ncontent<|im_end|>\n`) when the file has none or the
//! template fails to render.

use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: Option<String>,
}

impl ChatTemplate {
    /// Wraps the GGUF template (if any).
    pub fn new(source: Option<String>) -> Self {
        Self { source }
    }

    /// Whether the template came from the model file.
    pub fn from_model(&self) -> bool {
        self.source.is_some()
    }

    /// Renders `messages` followed by the assistant generation prompt.
    pub fn render(&self, messages: &[Message]) -> String {
        if let Some(src) = &self.source {
            let env = minijinja::Environment::new();
            let ctx = minijinja::context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => "",
                eos_token => "<|im_end|>",
            };
            if let Ok(s) = env.render_str(src, ctx) {
                return s;
            }
        }
        chatml(messages)
    }
}

/// Plain ChatML.
pub fn chatml(messages: &[Message]) -> String {
    let mut s = String::new();
    for m in messages {
        s.push_str("<|im_start|>");
        s.push_str(&m.role);
        s.push('\n');
        s.push_str(&m.content);
        s.push_str("<|im_end|>\n");
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_smollm2_template() {
        let t = ChatTemplate::new(Some(SMOLLM2.into()));
        let s = t.render(&[Message {
            role: "user".into(),
            content: "Hi".into(),
        }]);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn falls_back_to_chatml() {
        let t = ChatTemplate::new(None);
        let m = [
            Message {
                role: "system".into(),
                content: "S".into(),
            },
            Message {
                role: "user".into(),
                content: "U".into(),
            },
        ];
        assert_eq!(
            t.render(&m),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
        );
        let bad = ChatTemplate::new(Some("{% for %}".into()));
        assert_eq!(bad.render(&m), t.render(&m));
    }
}
