//! The HdrHistogram percentile distribution text format (`.hgrm`), as written by
//! HdrHistogram's `outputPercentileDistribution`: one line per percentile step (value,
//! percentile, cumulative count, 1/(1-percentile)) and a summary footer. Values are
//! microseconds.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// Percentile steps per halving of the distance to 100 %.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Renders the distribution.
pub fn render(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let quantile = step.quantile_iterated_to();
            let value = step.value_iterated_to() as f64;
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {quantile:2.12} {total:10}");
            }
        }
    }
    let sub_buckets = (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two();
    let (mean, stdev) = if histogram.is_empty() {
        (0.0, 0.0)
    } else {
        (histogram.mean(), histogram.stdev())
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        histogram.max() as f64,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_buckets
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distribution() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for value in 1..=1000u64 {
            histogram.record(value).unwrap();
        }
        let text = render(&histogram);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Value") && lines[0].contains("1/(1-Percentile)"));
        assert_eq!(lines[1], "");
        let rows: Vec<Vec<f64>> = lines[2..]
            .iter()
            .take_while(|line| !line.starts_with('#'))
            .map(|line| {
                line.split_whitespace()
                    .map(|f| f.parse().unwrap())
                    .collect()
            })
            .collect();
        assert!(rows.len() > 20);
        // Values and percentiles rise; the last row is 100 % with every value counted.
        for pair in rows.windows(2) {
            assert!(pair[1][0] >= pair[0][0] && pair[1][1] >= pair[0][1]);
        }
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!((last[0], last[1], last[2]), (1000.0, 1.0, 1000.0));
        let median = rows.iter().find(|row| row[1] >= 0.5).unwrap();
        assert_eq!(median[0], 500.0);
        assert_eq!(median[2], 500.0);
        assert!(text.contains("#[Mean    =      500.500, StdDeviation   ="));
        assert!(text.contains("#[Max     =     1000.000, Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn empty_histogram() {
        let histogram = Histogram::<u64>::new_with_bounds(1, 1000, 3).unwrap();
        let text = render(&histogram);
        assert!(text.contains("Total count    =            0"));
    }
}
