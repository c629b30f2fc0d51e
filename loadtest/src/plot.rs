//! A self-contained SVG chart of the latency distribution: latency (µs, linear) against
//! percentile on the usual HdrHistogram axis, where 90 %, 99 %, 99.9 %, ... are evenly spaced
//! (x = -log10(1 - q)).

use hdrhistogram::Histogram;
use std::fmt::Write;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 60.0;

/// Renders the chart; `title` and `subtitle` are shown above it.
pub fn render(histogram: &Histogram<u64>, title: &str, subtitle: &str) -> String {
    let count = histogram.len().max(1);
    // Decades of percentile resolution the data supports (1000 samples → up to 99.9 %).
    let decades = ((count as f64).log10().ceil()).clamp(1.0, 6.0);
    let max_value = nice_ceiling(histogram.max().max(1) as f64);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |quantile: f64| {
        let decade = if quantile >= 1.0 {
            decades
        } else {
            (-(1.0 - quantile).log10()).min(decades)
        };
        LEFT + decade / decades * plot_w
    };
    let y_of = |value: f64| TOP + plot_h - value / max_value * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="44" fill="#555">{}</text>"##,
        escape(subtitle)
    );

    // Horizontal grid and value labels.
    for i in 0..=5 {
        let value = max_value * f64::from(i) / 5.0;
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            format_value(value)
        );
    }
    // Vertical grid at 0 %, 90 %, 99 %, ...
    for decade in 0..=decades as u32 {
        let quantile = 1.0 - 10f64.powi(-(decade as i32));
        let x = x_of(quantile);
        let label = match decade {
            0 => "0%".to_string(),
            d => {
                let nines = 100.0 - 100.0 * 10f64.powi(-(d as i32));
                format!("{}%", trim_float(nines, d.saturating_sub(2) as usize))
            }
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (µs)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // The distribution as a step line.
    if !histogram.is_empty() {
        let mut points = String::new();
        let mut last_y = y_of(histogram.min() as f64);
        let _ = write!(points, "{:.1},{:.1}", x_of(0.0), last_y);
        for step in histogram.iter_quantiles(5) {
            let x = x_of(step.quantile_iterated_to());
            let y = y_of(step.value_iterated_to() as f64);
            let _ = write!(points, " {x:.1},{last_y:.1} {x:.1},{y:.1}");
            last_y = y;
        }
        let _ = writeln!(
            svg,
            r##"<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{points}"/>"##
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1, 2 or 5 × 10^n at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&candidate| candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn format_value(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{}M", trim_float(value / 1_000_000.0, 1))
    } else if value >= 10_000.0 {
        format!("{}k", trim_float(value / 1000.0, 1))
    } else {
        trim_float(value, 1)
    }
}

fn trim_float(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_chart() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for value in 1..=10_000u64 {
            histogram.record(value).unwrap();
        }
        let svg = render(&histogram, "http://x/?a=1&b=<2>", "closed loop");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&amp;b=&lt;2&gt;"));
        assert!(svg.contains("<polyline"));
        for label in [
            ">0%<", ">90%<", ">99%<", ">99.9%<", ">99.99%<", ">20k<", ">12k<",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn empty_and_helpers() {
        let histogram = Histogram::<u64>::new_with_bounds(1, 1000, 3).unwrap();
        let svg = render(&histogram, "t", "s");
        assert!(!svg.contains("<polyline") && !svg.contains("NaN"));
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(format_value(250_000.0), "250k");
        assert_eq!(trim_float(99.90, 1), "99.9");
    }
}
