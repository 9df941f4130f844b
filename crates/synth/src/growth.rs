//! Growth that follows age and sex: median weight, height and head circumference of children (CDC 2000
//! stature/weight-for-age and WHO head-circumference medians, rounded), a child's own percentile kept
//! through the years, and the standard normal distribution to report percentiles.

/// (age in years, boys' median, girls' median)
type Table = &'static [(f64, f64, f64)];

/// Weight for age, kg.
const WEIGHT: Table = &[
    (0.0, 3.3, 3.2),
    (0.25, 6.4, 5.8),
    (0.5, 7.9, 7.3),
    (0.75, 8.9, 8.2),
    (1.0, 9.6, 8.9),
    (1.5, 10.9, 10.2),
    (2.0, 12.2, 11.5),
    (3.0, 14.3, 13.9),
    (4.0, 16.3, 15.9),
    (5.0, 18.4, 17.9),
    (6.0, 20.7, 20.2),
    (7.0, 23.0, 22.4),
    (8.0, 25.6, 25.0),
    (9.0, 28.6, 28.2),
    (10.0, 32.0, 31.9),
    (11.0, 35.6, 36.0),
    (12.0, 39.9, 40.5),
    (13.0, 45.3, 44.9),
    (14.0, 50.8, 48.5),
    (15.0, 56.0, 51.0),
    (16.0, 60.8, 52.9),
    (17.0, 64.6, 54.0),
    (18.0, 67.2, 55.1),
    (20.0, 70.6, 57.5),
];

/// Length (under 2) and stature for age, cm.
const HEIGHT: Table = &[
    (0.0, 49.9, 49.1),
    (0.25, 61.4, 59.8),
    (0.5, 67.6, 65.7),
    (0.75, 72.0, 70.1),
    (1.0, 75.7, 74.0),
    (1.5, 82.3, 80.7),
    (2.0, 87.1, 85.7),
    (3.0, 96.1, 95.1),
    (4.0, 103.3, 102.7),
    (5.0, 110.0, 109.4),
    (6.0, 116.0, 115.5),
    (7.0, 121.7, 121.1),
    (8.0, 127.3, 126.6),
    (9.0, 132.6, 132.2),
    (10.0, 137.8, 138.3),
    (11.0, 143.1, 144.8),
    (12.0, 149.1, 151.5),
    (13.0, 156.2, 157.1),
    (14.0, 163.2, 160.4),
    (15.0, 169.0, 162.1),
    (16.0, 172.9, 162.9),
    (17.0, 175.2, 163.3),
    (18.0, 176.1, 163.7),
    (20.0, 176.8, 163.3),
];

/// Head circumference for age, cm (measured to 3 years).
const HEAD: Table =
    &[(0.0, 34.5, 33.9), (0.25, 40.5, 39.5), (0.5, 43.3, 42.2), (0.75, 44.9, 43.8), (1.0, 46.1, 45.0), (1.5, 47.4, 46.2), (2.0, 48.3, 47.2), (3.0, 49.5, 48.5)];

/// Spread of one standard deviation, as a fraction of the median.
pub const WEIGHT_SD: f64 = 0.12;
pub const HEIGHT_SD: f64 = 0.04;
pub const HEAD_SD: f64 = 0.035;

fn lookup(table: Table, age: f64, male: bool) -> f64 {
    let pick = |row: &(f64, f64, f64)| if male { row.1 } else { row.2 };
    let age = age.clamp(0.0, table[table.len() - 1].0);
    for w in table.windows(2) {
        if age <= w[1].0 {
            let t = (age - w[0].0) / (w[1].0 - w[0].0);
            return pick(&w[0]) + t * (pick(&w[1]) - pick(&w[0]));
        }
    }
    pick(&table[table.len() - 1])
}

pub fn median_weight(age: f64, male: bool) -> f64 {
    lookup(WEIGHT, age, male)
}

pub fn median_height(age: f64, male: bool) -> f64 {
    lookup(HEIGHT, age, male)
}

pub fn median_head(age: f64, male: bool) -> f64 {
    lookup(HEAD, age, male)
}

/// A child's measurement at `z` standard deviations from the median.
pub fn at(median: f64, sd: f64, z: f64) -> f64 {
    median * (1.0 + sd * z)
}

/// The standard normal distribution function (Abramowitz and Stegun 7.1.26, error below 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = z.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly = t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if z >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// Percentile (0–100) of a value `z` standard deviations from the median, to one decimal.
pub fn percentile(z: f64) -> f64 {
    (normal_cdf(z) * 1000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_interpolate_and_differ_by_sex() {
        assert_eq!(median_weight(0.0, true), 3.3);
        assert!((median_weight(1.25, false) - 9.55).abs() < 1e-9);
        assert!(median_height(16.0, true) > median_height(16.0, false) + 5.0);
        assert_eq!(median_height(40.0, true), 176.8, "adult height holds");
        assert_eq!(median_head(10.0, true), 49.5);
    }

    #[test]
    fn percentiles() {
        assert_eq!(percentile(0.0), 50.0);
        assert_eq!(percentile(1.0), 84.1);
        assert_eq!(percentile(-1.96), 2.5);
    }
}
