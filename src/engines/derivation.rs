//! The references Nix registers for a store derivation (`.drv`): its inputs, read from
//! its ATerm text, not found by scanning.
//!
//! Nix writes a derivation with `addTextToStore(name, text, references)`, where the
//! references are exactly its input derivations and input sources. The text also holds
//! the derivation's own output paths (and may mention other store paths in its
//! environment without them being inputs), so a reference scan of a `.drv` finds more than
//! Nix registered. For a `.drv` that parses as `Derive([outputs],[inputDrvs],[inputSrcs],…)`
//! the inputs are its references; anything else is scanned like any other path.

/// The input derivations and input sources (store paths) of the derivation `text`, or
/// `None` if it is not a derivation this parser reads.
pub fn inputs(text: &[u8]) -> Option<Vec<String>> {
    let mut p = Parser { s: text, i: 0 };
    p.eat(b"Derive(")?;
    // Outputs: skipped.
    p.skip_value()?;
    p.eat(b",")?;
    let mut out = Vec::new();
    // Input derivations: [("/nix/store/….drv",["out",…]),…].
    p.list(|p| {
        p.eat(b"(")?;
        out.push(p.string()?);
        p.eat(b",")?;
        p.skip_value()?;
        p.eat(b")")
    })?;
    p.eat(b",")?;
    // Input sources: ["/nix/store/…",…].
    p.list(|p| {
        out.push(p.string()?);
        Some(())
    })?;
    p.eat(b",")?;
    out.iter().all(|s| s.starts_with("/nix/store/")).then_some(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eat(&mut self, t: &[u8]) -> Option<()> {
        if self.s.get(self.i..self.i + t.len())? == t {
            self.i += t.len();
            Some(())
        } else {
            None
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// A quoted string with Nix's escapes (`\"`, `\\`, `\n`, `\r`, `\t`).
    fn string(&mut self) -> Option<String> {
        self.eat(b"\"")?;
        let mut v = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(v).ok(),
                b'\\' => {
                    let e = self.peek()?;
                    self.i += 1;
                    v.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        e => e,
                    });
                }
                c => v.push(c),
            }
        }
    }

    /// `[a,b,…]`, each element read by `f`.
    fn list(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b"[")?;
        if self.eat(b"]").is_some() {
            return Some(());
        }
        loop {
            f(self)?;
            if self.eat(b"]").is_some() {
                return Some(());
            }
            self.eat(b",")?;
        }
    }

    /// One value of any shape: a string, or a list or tuple of values.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'[' | b'(' => {
                let close = if self.peek()? == b'[' { b']' } else { b')' };
                self.i += 1;
                if self.eat(&[close]).is_some() {
                    return Some(());
                }
                loop {
                    self.skip_value()?;
                    if self.eat(&[close]).is_some() {
                        return Some(());
                    }
                    self.eat(b",")?;
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inputs;

    #[test]
    fn inputs_of_a_derivation() {
        let drv = br#"Derive([("out","/nix/store/0000000000000000000000000000000a-x","",""),("dev","/nix/store/0000000000000000000000000000000b-x-dev","","")],[("/nix/store/0000000000000000000000000000000c-y.drv",["out","lib"]),("/nix/store/0000000000000000000000000000000d-z.drv",["out"])],["/nix/store/0000000000000000000000000000000f-builder.sh"],"x86_64-linux","/bin/sh",["-e","/nix/store/0000000000000000000000000000000f-builder.sh"],[("name","x \"quoted\" \\ back"),("out","/nix/store/0000000000000000000000000000000a-x")])"#;
        assert_eq!(
            inputs(drv).unwrap(),
            vec![
                "/nix/store/0000000000000000000000000000000c-y.drv",
                "/nix/store/0000000000000000000000000000000d-z.drv",
                "/nix/store/0000000000000000000000000000000f-builder.sh",
            ]
        );
    }

    #[test]
    fn no_inputs_and_not_a_derivation() {
        assert_eq!(
            inputs(br#"Derive([("out","/nix/store/0000000000000000000000000000000a-x","","")],[],[],"s","b",[],[])"#),
            Some(vec![])
        );
        assert_eq!(inputs(b"hello"), None);
        assert_eq!(inputs(br#"Derive([("out""#), None);
        assert_eq!(inputs(br#"Derive([],[],["relative"],"s","b",[],[])"#), None);
    }
}
