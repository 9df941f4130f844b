//! Server-side SVG trend charts: readable without JavaScript, labelled for screen readers.

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A line chart of `points` (day, one value per series, `None` where a reading lacks it), oldest first;
/// `series` names the lines when there is more than one (a legend, and words for screen readers).
pub fn trend(title: &str, unit: &str, series: &[&str], points: &[(String, Vec<Option<f64>>)]) -> String {
    const W: f64 = 320.0;
    const H: f64 = 120.0;
    const PAD_L: f64 = 36.0;
    const PAD_B: f64 = 18.0;
    let values: Vec<f64> = points.iter().flat_map(|(_, v)| v.iter().flatten().copied()).collect();
    if values.is_empty() {
        return String::new();
    }
    let (mut lo, mut hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    if (hi - lo).abs() < 1e-9 {
        lo -= 1.0;
        hi += 1.0;
    }
    let span = hi - lo;
    // Points sit where their dates are (a gap of a year looks like one); by order when a date cannot be read.
    let days: Option<Vec<i64>> = points.iter().map(|(d, _)| civil_day(d)).collect();
    let position: Vec<f64> = match days.filter(|d| d.len() > 1 && d.last() > d.first()) {
        Some(d) => d.iter().map(|v| (v - d[0]) as f64 / (d[d.len() - 1] - d[0]) as f64).collect(),
        None => {
            let n = points.len().max(2) - 1;
            (0..points.len()).map(|i| i as f64 / n as f64).collect()
        }
    };
    let x = |i: usize| PAD_L + (W - PAD_L - 8.0) * position[i];
    let y = |v: f64| 6.0 + (H - PAD_B - 12.0) * (1.0 - (v - lo) / span);
    let count = points.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    let colours = ["#1f5fa8", "#b3541e"];
    let mut lines = String::new();
    for s in 0..count {
        let path: Vec<String> =
            points.iter().enumerate().filter_map(|(i, (_, v))| v.get(s).copied().flatten().map(|val| format!("{:.1},{:.1}", x(i), y(val)))).collect();
        lines.push_str(&format!("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>", colours[s % 2], path.join(" ")));
        for (i, (_, v)) in points.iter().enumerate() {
            if let Some(val) = v.get(s).copied().flatten() {
                lines.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>", x(i), y(val), colours[s % 2]));
            }
        }
    }
    let first = points.first().map(|p| p.0.as_str()).unwrap_or("");
    let last = points.last().map(|p| p.0.as_str()).unwrap_or("");
    let named = if series.len() > 1 { format!(" ({})", series.join(" over ")) } else { String::new() };
    let label = format!("{title}{named} trend from {first} to {last}, between {lo:.0} and {hi:.0} {unit}");
    for (s, name) in series.iter().enumerate().filter(|_| series.len() > 1) {
        let lx = PAD_L + 6.0 + 70.0 * s as f64;
        lines.push_str(&format!("<text x=\"{lx:.0}\" y=\"12\" font-size=\"10\" fill=\"{}\">{}</text>", colours[s % 2], esc(name)));
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{label}\" class=\"trend\">\
         <title>{label}</title>\
         <line x1=\"{PAD_L}\" y1=\"6\" x2=\"{PAD_L}\" y2=\"{yb}\" stroke=\"#999\"/><line x1=\"{PAD_L}\" y1=\"{yb}\" x2=\"{W}\" y2=\"{yb}\" stroke=\"#999\"/>\
         <text x=\"{tx}\" y=\"12\" font-size=\"10\" text-anchor=\"end\">{hi:.0}</text><text x=\"{tx}\" y=\"{yb}\" font-size=\"10\" text-anchor=\"end\">{lo:.0}</text>\
         <text x=\"{PAD_L}\" y=\"{H}\" font-size=\"10\">{first}</text><text x=\"{W}\" y=\"{H}\" font-size=\"10\" text-anchor=\"end\">{last}</text>{lines}</svg>",
        label = esc(&label),
        yb = H - PAD_B,
        tx = PAD_L - 4.0,
        first = esc(first),
        last = esc(last),
    )
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (the civil calendar), `None` when it is not one.
fn civil_day(date: &str) -> Option<i64> {
    let mut parts = date.get(..10)?.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_sit_where_their_dates_are() {
        assert_eq!(civil_day("1970-01-01"), Some(0));
        assert_eq!(civil_day("2000-03-01"), Some(11_017));
        assert_eq!(civil_day("2024-02-29"), Some(19_782));
        assert_eq!(civil_day("2024-13-01"), None);
        // Three readings: two a month apart, the third ten months later. The middle point is near the left.
        let svg = trend(
            "Weight",
            "kg",
            &[],
            &[("2025-01-01".into(), vec![Some(70.0)]), ("2025-02-01".into(), vec![Some(71.0)]), ("2025-12-01".into(), vec![Some(72.0)])],
        );
        let xs: Vec<f64> = svg.split("<circle cx=\"").skip(1).map(|c| c[..c.find('"').unwrap()].parse().unwrap()).collect();
        assert_eq!(xs.len(), 3);
        assert!((xs[1] - xs[0]) < (xs[2] - xs[0]) / 5.0, "{xs:?}");
    }

    #[test]
    fn charts_are_labelled_and_scaled() {
        let svg = trend("Heart rate", "/min", &[], &[("2026-01-01".into(), vec![Some(70.0)]), ("2026-02-01".into(), vec![Some(90.0)])]);
        assert!(svg.contains("aria-label=\"Heart rate trend from 2026-01-01 to 2026-02-01, between 70 and 90 /min\""));
        assert_eq!(svg.matches("<circle").count(), 2);
        let bp = trend(
            "Blood pressure",
            "mmHg",
            &["Systolic", "Diastolic"],
            &[("d1".into(), vec![Some(120.0), Some(80.0)]), ("d2".into(), vec![Some(130.0), None])],
        );
        assert_eq!(bp.matches("<polyline").count(), 2, "systolic and diastolic");
        assert_eq!(bp.matches("<circle").count(), 3, "a missing diastolic is not drawn");
        assert!(bp.contains("Blood pressure (Systolic over Diastolic) trend") && bp.contains(">Systolic</text>"), "{bp}");
        assert_eq!(trend("x", "", &[], &[]), "");
        assert!(!trend("<b>", "", &[], &[("d".into(), vec![Some(1.0)])]).contains("<b>"));
    }
}
