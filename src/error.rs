//! One error type for the whole core. Messages are written for the person running gitcap:
//! they say what went wrong and, where it helps, what to do about it.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// A model file is missing, unreadable or not what gitcap expects (config, tokenizer, weights).
    Model(String),
    /// A weight tensor is absent or has the wrong shape.
    Weight { name: String, problem: String },
    /// The image could not be decoded or is not acceptable (too large, truncated, not an image).
    Image(String),
    /// The request itself is invalid (bad option values, an empty frame list, ...).
    Invalid(String),
    /// Generation was cancelled by the caller.
    Cancelled,
    /// An error from candle that gitcap did not anticipate.
    Tensor(candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn model(msg: impl Into<String>) -> Self {
        Error::Model(msg.into())
    }
    pub fn image(msg: impl Into<String>) -> Self {
        Error::Image(msg.into())
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    pub fn weight(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Weight {
            name: name.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Model(m) => write!(f, "model: {m}"),
            Error::Weight { name, problem } => write!(
                f,
                "weights: tensor `{name}` {problem} (is this a complete GIT checkpoint matching its config.json?)"
            ),
            Error::Image(m) => write!(f, "image: {m}"),
            Error::Invalid(m) => write!(f, "invalid request: {m}"),
            Error::Cancelled => write!(f, "cancelled"),
            Error::Tensor(e) => write!(f, "tensor computation failed: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Tensor(e)
    }
}
