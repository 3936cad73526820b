//! `[volume NAME]` sections: the volume families an appliance makes at
//! its first start (there is no host driver to send Volume Create), and
//! finds on its SSDs at every later start.
//!
//! ```text
//! [volume db0]
//! layout raid10        # single, raid0, raid10, raid6 or erasure
//! ssds 0 shelf1        # SSD numbers (--ssd order) or [remote-ssd] names
//! size 1G
//! copies 2             # raid10: 2 (default) or 3
//! parity 2             # erasure: parity shards (data = SSDs - parity)
//! stripe 64K           # stripe unit (default 64K)
//! thin                 # thin provisioning
//! ```

use nvme_shim::vendor::layout;

use super::{one, valid_volume_name};
use crate::cli::parse_size;

/// A member SSD of a `[volume]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberRef {
    /// SSD number N (an `--ssd` image, or a remote SSD by its number).
    Number(usize),
    /// The remote SSD of that `[remote-ssd]` section.
    Remote(String),
}

/// A volume the appliance makes unless it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeConfig {
    pub name: String,
    /// `nvme_shim::vendor::layout::*`.
    pub layout: u8,
    pub members: Vec<MemberRef>,
    /// Size in bytes (whole 4 KiB blocks).
    pub size: u64,
    /// Copies of a raid10 (its Volume Create data shards).
    pub copies: u8,
    /// Parity shards of an erasure layout.
    pub parity: u8,
    /// Stripe unit in bytes (0: the accelerator's default).
    pub stripe: u32,
    pub thin: bool,
}

/// A `[volume]` section while it is read.
pub struct VolumeDraft {
    line: usize,
    config: VolumeConfig,
    layout: Option<u8>,
    size: Option<u64>,
    copies: Option<u8>,
    parity: Option<u8>,
}

/// Largest SSD number a Volume Create mask can hold.
const MAX_SSD: usize = 63;

impl VolumeDraft {
    /// A section `[volume NAME]` starting at `line`.
    pub fn new(name: &str, line: usize) -> Result<Self, String> {
        if !valid_volume_name(name) {
            return Err(format!(
                "volume name '{name}' is not 1-31 of [A-Za-z0-9._-]"
            ));
        }
        Ok(Self {
            line,
            config: VolumeConfig {
                name: name.to_string(),
                layout: layout::SINGLE,
                members: Vec::new(),
                size: 0,
                copies: 0,
                parity: 0,
                stripe: 0,
                thin: false,
            },
            layout: None,
            size: None,
            copies: None,
            parity: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// One `key value...` line of the section.
    pub fn line(&mut self, key: &str, values: &[&str]) -> Result<(), String> {
        match key {
            "layout" => {
                self.layout = Some(match one(key, values)? {
                    "single" => layout::SINGLE,
                    "raid0" => layout::RAID0,
                    "raid10" => layout::RAID10,
                    "raid6" => layout::RAID6,
                    "erasure" => layout::ERASURE,
                    other => {
                        return Err(format!(
                            "layout '{other}' is not single, raid0, raid10, raid6 or erasure"
                        ))
                    }
                })
            }
            "ssds" => {
                if values.is_empty() {
                    return Err("'ssds' needs at least one SSD".into());
                }
                for v in values {
                    let member = match v.parse::<usize>() {
                        Ok(n) if n <= MAX_SSD => MemberRef::Number(n),
                        Ok(n) => return Err(format!("SSD {n} is beyond SSD {MAX_SSD}")),
                        Err(_) if valid_volume_name(v) => MemberRef::Remote(v.to_string()),
                        Err(_) => {
                            return Err(format!(
                                "'{v}' is neither an SSD number nor a remote SSD name"
                            ))
                        }
                    };
                    if self.config.members.contains(&member) {
                        return Err(format!("SSD '{v}' named twice"));
                    }
                    self.config.members.push(member);
                }
            }
            "size" => {
                let size = parse_size(one(key, values)?)?;
                if size == 0 || !size.is_multiple_of(4096) {
                    return Err(format!("size {size} is not a positive multiple of 4 KiB"));
                }
                self.size = Some(size);
            }
            "copies" => self.copies = Some(small_number(key, one(key, values)?)?),
            "parity" => self.parity = Some(small_number(key, one(key, values)?)?),
            "stripe" => {
                let v = parse_size(one(key, values)?)?;
                match u32::try_from(v) {
                    Ok(s) if s.is_power_of_two() && (4096..=1 << 20).contains(&s) => {
                        self.config.stripe = s;
                    }
                    _ => return Err(format!("stripe {v} is not a power of two, 4K to 1M")),
                }
            }
            "thin" => {
                if !values.is_empty() {
                    return Err("'thin' takes no value".into());
                }
                self.config.thin = true;
            }
            other => return Err(format!("unknown volume setting '{other}'")),
        }
        Ok(())
    }

    /// Checks the section as a whole: what Volume Create would refuse
    /// for the layout and member count, said here with the line.
    pub fn finish(self) -> Result<VolumeConfig, String> {
        let at = |e: String| format!("line {}: [volume {}] {e}", self.line, self.config.name);
        let mut v = self.config.clone();
        v.layout = self.layout.ok_or_else(|| at("needs 'layout'".into()))?;
        v.size = self.size.ok_or_else(|| at("needs 'size'".into()))?;
        let n = v.members.len();
        if n == 0 {
            return Err(at("needs 'ssds'".into()));
        }
        if self.copies.is_some() && v.layout != layout::RAID10 {
            return Err(at("'copies' is for raid10 only".into()));
        }
        if self.parity.is_some() && v.layout != layout::ERASURE {
            return Err(at("'parity' is for erasure only".into()));
        }
        v.copies = self.copies.unwrap_or(2);
        v.parity = self.parity.unwrap_or(0);
        let fits = match v.layout {
            layout::SINGLE => true,
            layout::RAID0 => n >= 2,
            layout::RAID10 => (2..=3).contains(&v.copies) && n >= usize::from(v.copies),
            layout::RAID6 => n >= 4,
            _ => v.parity > 0 && n > usize::from(v.parity),
        };
        if !fits {
            return Err(at(format!(
                "{n} SSD(s) do not fit the layout (raid0: 2 or more, raid10: at least \
                 'copies' (2-3), raid6: 4 or more, erasure: more than 'parity')"
            )));
        }
        if v.layout != layout::RAID10 {
            v.copies = 0;
        }
        Ok(v)
    }
}

fn small_number(key: &str, v: &str) -> Result<u8, String> {
    v.parse()
        .ok()
        .filter(|&n: &u8| n > 0)
        .ok_or_else(|| format!("'{key}' '{v}' is not 1-255"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A section's `key values` lines.
    type Lines<'a> = &'a [(&'a str, &'a [&'a str])];

    fn section(lines: Lines<'_>) -> Result<VolumeConfig, String> {
        let mut d = VolumeDraft::new("v", 1)?;
        for (key, values) in lines {
            d.line(key, values)?;
        }
        d.finish()
    }

    #[test]
    fn a_volume_section_reads_back() {
        let v = section(&[
            ("layout", &["raid10"]),
            ("ssds", &["0", "shelf1", "2"]),
            ("size", &["1G"]),
            ("copies", &["3"]),
            ("stripe", &["128K"]),
            ("thin", &[]),
        ])
        .expect("section");
        assert_eq!(v.layout, layout::RAID10);
        assert_eq!(
            v.members,
            vec![
                MemberRef::Number(0),
                MemberRef::Remote("shelf1".into()),
                MemberRef::Number(2)
            ]
        );
        assert_eq!(
            (v.size, v.copies, v.stripe, v.thin),
            (1 << 30, 3, 128 << 10, true)
        );
        let e = section(&[
            ("layout", &["erasure"]),
            ("ssds", &["0", "1", "2"]),
            ("size", &["4M"]),
            ("parity", &["1"]),
        ])
        .expect("erasure");
        assert_eq!((e.parity, e.copies), (1, 0));
    }

    #[test]
    fn volume_mistakes_are_refused() {
        let cases: &[(Lines<'_>, &str)] = &[
            (&[("layout", &["raid5"])], "not single"),
            (&[("ssds", &[])], "at least one"),
            (&[("ssds", &["64"])], "beyond"),
            (&[("ssds", &["a/b"])], "neither"),
            (&[("ssds", &["0", "0"])], "twice"),
            (&[("size", &["1000"])], "multiple of 4 KiB"),
            (&[("size", &["0"])], "size"),
            (&[("stripe", &["3K"])], "power of two"),
            (&[("stripe", &["2M"])], "power of two"),
            (&[("copies", &["0"])], "1-255"),
            (&[("thin", &["yes"])], "no value"),
            (&[("dedup", &[])], "unknown volume setting"),
            (&[("ssds", &["0"]), ("size", &["4M"])], "needs 'layout'"),
            (&[("layout", &["single"]), ("ssds", &["0"])], "needs 'size'"),
            (
                &[("layout", &["single"]), ("size", &["4M"])],
                "needs 'ssds'",
            ),
            (
                &[("layout", &["raid0"]), ("ssds", &["0"]), ("size", &["4M"])],
                "do not fit",
            ),
            (
                &[
                    ("layout", &["raid10"]),
                    ("ssds", &["0", "1"]),
                    ("size", &["4M"]),
                    ("copies", &["3"]),
                ],
                "do not fit",
            ),
            (
                &[
                    ("layout", &["raid6"]),
                    ("ssds", &["0", "1", "2"]),
                    ("size", &["4M"]),
                ],
                "do not fit",
            ),
            (
                &[
                    ("layout", &["erasure"]),
                    ("ssds", &["0", "1"]),
                    ("size", &["4M"]),
                ],
                "do not fit",
            ),
            (
                &[
                    ("layout", &["single"]),
                    ("ssds", &["0"]),
                    ("size", &["4M"]),
                    ("copies", &["2"]),
                ],
                "raid10 only",
            ),
            (
                &[
                    ("layout", &["raid10"]),
                    ("ssds", &["0", "1"]),
                    ("size", &["4M"]),
                    ("parity", &["1"]),
                ],
                "erasure only",
            ),
        ];
        for (lines, want) in cases {
            match section(lines) {
                Ok(v) => panic!("{lines:?} accepted: {v:?}"),
                Err(e) => assert!(e.contains(want), "{lines:?}: '{e}' lacks '{want}'"),
            }
        }
        assert!(VolumeDraft::new("a b", 1).is_err());
    }
}
