//! Compile-time behaviour of `#[derive(Repository)]`: the accepted attributes build (and their
//! generated constants are checked at run time), and every rejected input fails with the error
//! committed next to it in `tests/ui/fail/*.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
