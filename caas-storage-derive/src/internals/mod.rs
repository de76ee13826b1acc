//! Reading the input: the model of the struct ([`ast`]), its attributes ([`attr`]), the rules
//! across them ([`check`]), the checked [`model`] code is generated from, and helpers.

pub mod ast;
pub mod attr;
pub mod case;
pub mod check;
pub mod ctxt;
pub mod duration;
pub mod model;
pub mod suggest;
