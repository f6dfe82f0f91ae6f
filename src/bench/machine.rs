//! What machine a bench ran on, so figures from different machines are never compared as if
//! alike: one VM relays 2.5× slower than another with the same core count, mostly from the
//! CPU's AES support (AES-NI, and VAES for wide AES-GCM).

use serde::Serialize;

/// The facts the header and the JSON carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// `model name` of /proc/cpuinfo, e.g. `AMD EPYC 7B13`.
    pub cpu_model: String,
    /// Cores this process may use.
    pub cores: usize,
    /// AES-NI: hardware AES, what AES-128-GCM runs on.
    pub aes_ni: bool,
    /// VAES: AES on 256/512-bit vectors (several blocks per instruction).
    pub vaes: bool,
    pub avx2: bool,
    /// The kernel release (`uname -r`).
    pub kernel: String,
}

impl Machine {
    /// Reads this machine (Linux; elsewhere the fields it cannot read stay empty).
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        Machine::parse(&cpuinfo, kernel.trim(), cores)
    }

    fn parse(cpuinfo: &str, kernel: &str, cores: usize) -> Machine {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let flags = field("flags").unwrap_or_default();
        let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
        Machine {
            cpu_model: field("model name").unwrap_or_else(|| "unknown CPU".into()),
            cores,
            aes_ni: has("aes"),
            vaes: has("vaes"),
            avx2: has("avx2"),
            kernel: kernel.to_string(),
        }
    }

    /// One line for the table's header.
    pub fn line(&self) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        format!(
            "machine: {}, {} cores, AES-NI {}, VAES {}, AVX2 {}, Linux {}",
            self.cpu_model,
            self.cores,
            yes(self.aes_ni),
            yes(self.vaes),
            yes(self.avx2),
            self.kernel
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_model_and_the_aes_flags() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 aes avx2 pclmulqdq\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        let m = Machine::parse(cpuinfo, "6.1.0", 2);
        assert_eq!(m.cpu_model, "AMD EPYC 7B13");
        assert!(m.aes_ni && m.avx2 && !m.vaes);
        assert_eq!(
            m.line(),
            "machine: AMD EPYC 7B13, 2 cores, AES-NI yes, VAES no, AVX2 yes, Linux 6.1.0"
        );
        // A flag that only contains "aes" as part of its name is not AES-NI.
        let m = Machine::parse("flags : vaes_like\n", "", 1);
        assert!(!m.aes_ni && !m.vaes);
        assert_eq!(m.cpu_model, "unknown CPU");
    }

    #[test]
    fn this_machine_has_a_model_and_cores() {
        let m = Machine::this();
        assert!(m.cores >= 1);
        assert!(!m.cpu_model.is_empty());
    }
}
