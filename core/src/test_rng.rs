//! A small deterministic generator for the property tests, so that failures reproduce
//! without a seed crate. (`runtime-tests/tests/{lua_rule,cancel,failures}.rs` include it too.)

pub struct XorShift(pub u64);

impl XorShift {
    /// A number in `0..below`.
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }

    /// One of `choices`.
    pub fn pick<'a, T: ?Sized>(&mut self, choices: &[&'a T]) -> &'a T {
        choices[self.next(choices.len() as u64) as usize]
    }
}
