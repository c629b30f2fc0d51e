//! Time windows for rule conditions (`time in Mon-Fri 08:00-18:00 Europe/Paris`): days of the
//! week and a time of day in an IANA zone, read once from the system's zone database (TZif files
//! under `/usr/share/zoneinfo`) when the config is compiled, then evaluated per request with a
//! binary search over the zone's transitions.

use std::sync::Arc;

/// Where the zone database lives.
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// A time zone: UTC offsets from each transition on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: Box<str>,
    /// (transition time, UTC offset in seconds from then on), sorted by time.
    transitions: Box<[(i64, i32)]>,
    /// Offset before the first transition.
    initial: i32,
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl Zone {
    /// A fixed-offset zone.
    pub fn utc() -> Zone {
        Zone {
            name: "UTC".into(),
            transitions: Box::new([]),
            initial: 0,
        }
    }

    /// Loads an IANA zone (`Europe/Paris`) from the system database.
    pub fn load(name: &str) -> Result<Zone, String> {
        if matches!(name, "UTC" | "Etc/UTC" | "Z") {
            return Ok(Zone::utc());
        }
        let valid = !name.is_empty()
            && !name.contains("..")
            && !name.starts_with('/')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'));
        if !valid {
            return Err(format!("`{name}` is not an IANA time zone name"));
        }
        let path = std::path::Path::new(ZONEINFO).join(name);
        let data = std::fs::read(&path)
            .map_err(|e| format!("time zone `{name}`: cannot read {}: {e}", path.display()))?;
        Zone::parse(name, &data).map_err(|e| format!("time zone `{name}`: {e}"))
    }

    /// Reads a TZif file (version 2 or later: its 64-bit data block).
    pub fn parse(name: &str, data: &[u8]) -> Result<Zone, String> {
        let header = |at: usize| -> Result<[usize; 6], String> {
            let h = data.get(at..at + 44).ok_or("truncated TZif header")?;
            if &h[..4] != b"TZif" {
                return Err("not a TZif file".into());
            }
            let mut counts = [0usize; 6];
            for (i, c) in counts.iter_mut().enumerate() {
                *c = be_i32(&h[20 + 4 * i..]) as usize;
            }
            Ok(counts)
        };
        // isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
        let [isut, isstd, leap, time, types, chars] = header(0)?;
        if data[4] < b'2' {
            return Err("TZif version 1 files are not supported".into());
        }
        let v1_len = time * 4 + time + types * 6 + chars + leap * 8 + isstd + isut;
        let start = 44 + v1_len;
        let [_, _, _, time, types, _] = header(start)?;
        let mut at = start + 44;
        let times = data.get(at..at + time * 8).ok_or("truncated transitions")?;
        at += time * 8;
        let indices = data
            .get(at..at + time)
            .ok_or("truncated transition types")?;
        at += time;
        let infos = data.get(at..at + types * 6).ok_or("truncated types")?;
        let offset_of = |i: usize| -> Result<i32, String> {
            infos
                .get(i * 6..i * 6 + 4)
                .map(be_i32)
                .ok_or_else(|| "transition names no type".to_string())
        };
        if types == 0 {
            return Err("no local time types".into());
        }
        let transitions = (0..time)
            .map(|i| Ok((be_i64(&times[i * 8..]), offset_of(indices[i] as usize)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Zone {
            name: name.into(),
            transitions: transitions.into(),
            initial: offset_of(0)?,
        })
    }

    /// The UTC offset in seconds at `unix` time (the last transition's after the table ends).
    pub fn offset_at(&self, unix: i64) -> i32 {
        match self.transitions.partition_point(|(t, _)| *t <= unix) {
            0 => self.initial,
            n => self.transitions[n - 1].1,
        }
    }
}

/// `Mon-Fri 08:00-18:00 <zone>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit 0 = Monday … bit 6 = Sunday.
    days: u8,
    /// Minutes after local midnight; `end` is exclusive, and before `start` the window wraps
    /// past midnight.
    start: u16,
    end: u16,
    zone: Arc<Zone>,
}

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

fn day(text: &str) -> Result<u8, String> {
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(text))
        .map(|i| i as u8)
        .ok_or_else(|| format!("`{text}` is not a day (Mon … Sun)"))
}

fn minutes(text: &str) -> Result<u16, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` must be HH:MM"))?;
    let h: u16 = h.parse().map_err(|_| format!("`{text}` must be HH:MM"))?;
    let m: u16 = m.parse().map_err(|_| format!("`{text}` must be HH:MM"))?;
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(format!("`{text}` is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl TimeWindow {
    /// Parses `Mon-Fri 08:00-18:00 Europe/Paris` (days as ranges or lists: `Mon,Wed`,
    /// `Sat-Sun`, `*` for every day).
    pub fn parse(text: &str) -> Result<TimeWindow, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [days_text, hours, zone] = parts[..] else {
            return Err(format!(
                "`{text}`: a time window is `<days> <HH:MM>-<HH:MM> <IANA zone>`, e.g. `Mon-Fri 08:00-18:00 Europe/Paris`"
            ));
        };
        let mut days = 0u8;
        if days_text == "*" {
            days = 0x7f;
        } else {
            for item in days_text.split(',') {
                match item.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        let mut d = a;
                        loop {
                            days |= 1 << d;
                            if d == b {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => days |= 1 << day(item)?,
                }
            }
        }
        let (start, end) = hours
            .split_once('-')
            .ok_or_else(|| format!("`{hours}` must be HH:MM-HH:MM"))?;
        let (start, end) = (minutes(start)?, minutes(end)?);
        if start == end {
            return Err(format!("`{hours}`: an empty window"));
        }
        Ok(TimeWindow {
            days,
            start,
            end,
            zone: Arc::new(Zone::load(zone)?),
        })
    }

    /// Whether `unix` falls in the window (the day is the local day of `unix`).
    pub fn contains(&self, unix: i64) -> bool {
        let local = unix + i64::from(self.zone.offset_at(unix));
        let days = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday (index 3 from Monday).
        let weekday = (days + 3).rem_euclid(7) as u8;
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        let in_hours = if self.start < self.end {
            minute >= self.start && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        };
        self.days & (1 << weekday) != 0 && in_hours
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-30 is a Monday.
    const MON_2026_11_30_UTC: i64 = 1_795_996_800;

    #[test]
    fn utc_windows() {
        let w = TimeWindow::parse("Mon-Fri 08:00-18:00 UTC").unwrap();
        let at = |day: i64, h: i64, m: i64| MON_2026_11_30_UTC + day * 86_400 + h * 3600 + m * 60;
        assert!(w.contains(at(0, 8, 0)));
        assert!(w.contains(at(4, 17, 59)));
        assert!(!w.contains(at(0, 18, 0)), "end is exclusive");
        assert!(!w.contains(at(0, 7, 59)));
        assert!(!w.contains(at(5, 12, 0)), "Saturday");
        let night = TimeWindow::parse("* 22:00-06:00 UTC").unwrap();
        assert!(night.contains(at(2, 23, 0)) && night.contains(at(3, 5, 0)));
        assert!(!night.contains(at(2, 12, 0)));
        let weekend = TimeWindow::parse("Sat,Sun 00:00-24:00 UTC").unwrap();
        assert!(weekend.contains(at(6, 23, 59)) && !weekend.contains(at(0, 0, 0)));
        for bad in [
            "Mon-Fri 08:00-18:00",
            "Mon-Fri 8-18 UTC",
            "Funday 08:00-18:00 UTC",
            "Mon 08:00-08:00 UTC",
            "Mon 08:00-18:00 ../etc/passwd",
        ] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zones_follow_daylight_saving() {
        let Ok(paris) = Zone::load("Europe/Paris") else {
            // No zone database on this machine.
            return;
        };
        // Winter: UTC+1. Summer (2026-07-01 12:00 UTC): UTC+2.
        assert_eq!(paris.offset_at(MON_2026_11_30_UTC), 3600);
        assert_eq!(paris.offset_at(1_782_907_200), 7200);
        let w = TimeWindow::parse("Mon-Fri 08:00-18:00 Europe/Paris").unwrap();
        // 07:30 UTC on a winter Monday is 08:30 in Paris.
        assert!(w.contains(MON_2026_11_30_UTC + 7 * 3600 + 30 * 60));
        assert!(
            !w.contains(MON_2026_11_30_UTC + 17 * 3600 + 30 * 60),
            "18:30 in Paris"
        );
        assert!(Zone::load("Nowhere/Atlantis").is_err());
    }
}
