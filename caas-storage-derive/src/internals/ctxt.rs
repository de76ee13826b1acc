//! The error collector: every check reports into one [`Ctxt`], so a struct with several
//! mistakes gets all of them in one compile instead of one per attempt.

use std::cell::RefCell;
use std::fmt::Display;

use proc_macro2::Span;
use quote::ToTokens;

/// Collects the errors found while parsing and checking one `#[derive(Repository)]` input.
///
/// Every error carries the span of the token it is about. [`Ctxt::finish`] must be called before
/// the collector is dropped; it hands back the errors combined into one [`syn::Error`].
pub struct Ctxt {
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    /// An empty collector.
    pub fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records `message` at the tokens of `tokens` (the whole range they cover).
    pub fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records `message` at `span`.
    pub fn error_at<M: Display>(&self, span: Span, message: M) {
        self.push(syn::Error::new(span, message));
    }

    /// Records an error produced by `syn` (a syntax error inside an attribute).
    pub fn syn_error(&self, error: syn::Error) {
        self.push(error);
    }

    /// Ends collection: `Err` with every recorded error combined, in the order recorded.
    pub fn finish(self) -> Result<(), syn::Error> {
        let errors = self
            .errors
            .borrow_mut()
            .take()
            .expect("Ctxt::finish called twice");
        let mut iter = errors.into_iter();
        match iter.next() {
            None => Ok(()),
            Some(mut first) => {
                for e in iter {
                    first.combine(e);
                }
                Err(first)
            }
        }
    }

    fn push(&self, error: syn::Error) {
        self.errors
            .borrow_mut()
            .as_mut()
            .expect("error reported after Ctxt::finish")
            .push(error);
    }
}

impl Default for Ctxt {
    fn default() -> Self {
        Ctxt::new()
    }
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        let unchecked = self.errors.get_mut().is_some();
        if unchecked && !std::thread::panicking() {
            panic!("Ctxt dropped without calling Ctxt::finish");
        }
    }
}
