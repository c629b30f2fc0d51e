//! Limit amounts as written in the config: request rates (`100/s`, `600/min`, `3600/h`) and
//! quotas over calendar periods (`100000/day`), with the UTC period arithmetic quotas need.

use std::time::Duration;

/// Why an amount could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` must be n/s, n/min or n/h with n > 0")]
    Rate(String),
    #[error("`{0}` must be n/minute, n/hour, n/day or n/month with n > 0")]
    Quota(String),
}

/// A steady request rate: `count` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, AmountError> {
        let bad = || AmountError::Rate(text.to_string());
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = n.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
        let secs = match unit {
            "s" => 1,
            "min" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        Ok(Rate {
            count,
            period: Duration::from_secs(secs),
        })
    }

    /// Tokens added per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.period.as_secs_f64()
    }
}

/// A calendar period (UTC) a quota counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

/// A long-period allowance: `limit` requests per calendar `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaAmount {
    pub limit: u64,
    pub period: Period,
}

impl QuotaAmount {
    pub fn parse(text: &str) -> Result<QuotaAmount, AmountError> {
        let bad = || AmountError::Quota(text.to_string());
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        let limit: u64 = n.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
        let period = match unit {
            "minute" => Period::Minute,
            "hour" => Period::Hour,
            "day" => Period::Day,
            "month" => Period::Month,
            _ => return Err(bad()),
        };
        Ok(QuotaAmount { limit, period })
    }
}

impl Period {
    /// The number of the period `unix` (seconds since the epoch, UTC) falls in: minutes, hours
    /// or days since the epoch, or `year * 12 + month - 1`.
    pub fn index(self, unix: i64) -> i64 {
        match self {
            Period::Minute => unix.div_euclid(60),
            Period::Hour => unix.div_euclid(3600),
            Period::Day => unix.div_euclid(86_400),
            Period::Month => {
                let (year, month, _) = civil_from_days(unix.div_euclid(86_400));
                year * 12 + month - 1
            }
        }
    }

    /// Seconds since the epoch at which period `index` ends (the next one starts).
    pub fn end(self, index: i64) -> i64 {
        match self {
            Period::Minute => (index + 1) * 60,
            Period::Hour => (index + 1) * 3600,
            Period::Day => (index + 1) * 86_400,
            Period::Month => {
                let next = index + 1;
                days_from_civil(next.div_euclid(12), next.rem_euclid(12) + 1, 1) * 86_400
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// Year, month (1–12) and day (1–31) of a day number since 1970-01-01 (proleptic Gregorian,
/// after H. Hinnant's algorithms).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day number since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_quotas_parse() {
        assert_eq!(Rate::parse("100/s").unwrap().per_second(), 100.0);
        assert_eq!(Rate::parse("600/min").unwrap().per_second(), 10.0);
        assert_eq!(Rate::parse("3600/h").unwrap().per_second(), 1.0);
        for bad in [
            "0/s",
            "10/d",
            "s",
            "-1/s",
            "1.5/s",
            "10/minute",
            "100/day",
            "fast",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        let q = QuotaAmount::parse("100000/day").unwrap();
        assert_eq!((q.limit, q.period), (100_000, Period::Day));
        assert!(QuotaAmount::parse("10/s").is_err());
        assert!(QuotaAmount::parse("0/month").is_err());
    }

    #[test]
    fn calendar_periods_are_utc_aligned() {
        // 2026-11-29T10:20:30Z
        let t = 1_795_947_630;
        assert_eq!(civil_from_days(t / 86_400), (2026, 11, 29));
        let day = Period::Day.index(t);
        assert_eq!(Period::Day.end(day), 1_795_996_800); // 2026-11-30T00:00:00Z
        let month = Period::Month.index(t);
        assert_eq!(month, 2026 * 12 + 10);
        assert_eq!(Period::Month.end(month), 1_796_083_200); // 2026-12-01T00:00:00Z
        let december = Period::Month.index(1_796_083_200 + 5);
        assert_eq!(Period::Month.end(december), 1_798_761_600); // 2027-01-01T00:00:00Z
        assert_eq!(Period::Minute.end(Period::Minute.index(t)), t - 30 + 60);
        assert_eq!(
            Period::Hour.end(Period::Hour.index(t)),
            t - 20 * 60 - 30 + 3600
        );
        for days in [-1000, 0, 59, 60, 365, 11_016, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
