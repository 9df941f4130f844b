//! One patient's record: a plan of visits over the years, then each visit with what happens in it.

use crate::codes::*;
use crate::growth;
use crate::rng::Rng;
use crate::*;
use base64::Engine as _;
use serde_json::{Value, json};
use time::{Date, Duration, PrimitiveDateTime, Time};

/// Age in years of the n-th patient (by index modulo 25): the first three are adults (the first is the demo
/// patient), then newborns to the very old.
const AGES: [f64; 25] =
    [58.0, 67.0, 44.0, 0.06, 1.6, 4.5, 8.2, 13.4, 16.7, 24.0, 31.0, 36.5, 52.0, 71.0, 79.0, 88.0, 97.0, 0.55, 2.7, 10.5, 19.0, 27.5, 39.0, 62.0, 84.0];
/// Patients (index modulo 25) with fifteen years of records, and with a single visit.
const LONG: [usize; 3] = [0, 1, 14];
const SPARSE: [usize; 2] = [9, 21];
/// The patient (index modulo 25) who is pregnant now.
const PREGNANT: usize = 10;

const YEAR: f64 = 365.25;

/// The kinds of visit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Wellness,
    FollowUp,
    Sick(usize),
    Emergency(usize),
    Inpatient(usize),
}

/// A visit as it happened.
struct Enc {
    id: String,
    start: PrimitiveDateTime,
    end: PrimitiveDateTime,
    clinician: usize,
    location: &'static str,
    org: usize,
}

impl Enc {
    /// A moment `minutes` into the visit, never after its end.
    fn at(&self, minutes: i64) -> String {
        datetime_str((self.start + Duration::minutes(minutes)).min(self.end))
    }
}

/// A chronic problem: index in CONDITIONS, onset, and once recorded its Condition id.
struct Problem {
    cond: usize,
    onset: Date,
    id: Option<String>,
    /// The active prescription for it, with its date.
    rx: Option<(String, Date)>,
}

/// Lower-case ASCII for e-mail addresses: "Müller" → "muller", "O'Brien" → "obrien".
pub(crate) fn ascii_lower(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'á' | 'à' | 'â' | 'ä' | 'Á' => Some('a'),
            'é' | 'è' | 'ê' | 'ë' | 'É' => Some('e'),
            'í' | 'ï' => Some('i'),
            'ó' | 'ö' | 'ô' => Some('o'),
            'ú' | 'ü' | 'Ü' => Some('u'),
            'ñ' => Some('n'),
            c if c.is_ascii_alphanumeric() => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

struct Gen {
    rng: Rng,
    b: Bundle,
    pid: String,
    counter: usize,
    n: usize,
    male: bool,
    birth: Date,
    today: Date,
    given: &'static str,
    family: String,
    gp: usize,
    org: usize,
    /// A child's own growth percentiles (as z-scores) kept through the years.
    z_weight: f64,
    z_height: f64,
    z_head: f64,
    /// An adult's weight, drifting over the years.
    adult_weight: f64,
    bp_offset: f64,
    /// Each test's own offset for this patient, in standard deviations (A1C, GLUCOSE, ... by code).
    lab_offsets: Vec<(&'static str, f64)>,
    problems: Vec<Problem>,
    smoking: (&'static str, &'static str),
    food_insecure: bool,
    /// Resources written since the last Provenance.
    recorded: Vec<Value>,
    last_visit: Option<PrimitiveDateTime>,
}

pub(crate) fn bundle(seed: u64, n: usize, today: Date) -> Value {
    let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
    let slot = n % 25;
    let age_years = if n < 25 { AGES[slot] } else { AGES[slot] * (0.85 + rng.unit() * 0.3) };
    let jitter = if age_years < 0.2 { rng.range(0, 6) } else { rng.range(0, 60) };
    let birth = today - Duration::days((age_years * YEAR) as i64 + jitter);
    let male = if n < 25 { slot % 2 == 1 } else { rng.chance(0.5) };
    let names = if male { GIVEN_MALE } else { GIVEN_FEMALE };
    let gi = (n / 2 * 7 + seed as usize) % names.len();
    let given = names[gi];
    // The family name: stepping by a stride coprime with 61 visits each once before any repeats.
    let family = {
        let f = FAMILY[(n * 17 + seed as usize * 5) % FAMILY.len()];
        if n < FAMILY.len() { f.to_string() } else { format!("{f}-{}", FAMILY[(n / FAMILY.len() * 23 + n) % FAMILY.len()]) }
    };
    let child = age_years < 18.0;
    let gp = if child {
        PEDIATRICIAN
    } else if slot == 0 {
        FAMILY_DOCTOR
    } else {
        [FAMILY_DOCTOR, INTERNIST, NURSE_PRACTITIONER][n % 3]
    };
    let org = CLINICIANS[gp].org;
    let mut g = Gen {
        pid: patient_id(seed, n),
        b: Bundle::new(),
        counter: 0,
        n,
        male,
        birth,
        today,
        given,
        family,
        gp,
        org,
        z_height: rng.normal(0.0, 0.8).clamp(-2.0, 2.0),
        // Weight follows height: a tall child is usually heavier too.
        z_weight: 0.0,
        z_head: rng.normal(0.0, 0.8).clamp(-2.0, 2.0),
        adult_weight: 0.0,
        bp_offset: rng.normal(0.0, 6.0),
        lab_offsets: Vec::new(),
        problems: Vec::new(),
        smoking: ("266919005", "Never smoked tobacco (finding)"),
        food_insecure: false,
        recorded: Vec::new(),
        last_visit: None,
        rng,
    };
    g.z_weight = (0.6 * g.z_height + g.rng.normal(0.0, 0.6)).clamp(-2.0, 2.0);
    g.build(names, gi);
    g.b.finish()
}

impl Gen {
    fn id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{}-{kind}-{}", self.pid, self.counter)
    }

    fn patient_ref(&self) -> Value {
        named_reference("Patient", &self.pid, &format!("{} {}", self.given, self.family))
    }

    fn put(&mut self, resource: Value) {
        self.recorded.push(reference(resource["resourceType"].as_str().unwrap_or_default(), resource["id"].as_str().unwrap_or_default()));
        self.b.put(resource);
    }

    fn age_at(&self, d: Date) -> f64 {
        (d - self.birth).whole_days() as f64 / YEAR
    }

    fn has(&self, code: &str) -> bool {
        self.problems.iter().any(|p| CONDITIONS[p.cond].0 == code && p.onset <= self.today)
    }

    fn active_at(&self, code: &str, d: Date) -> bool {
        self.problems.iter().any(|p| CONDITIONS[p.cond].0 == code && p.onset <= d)
    }

    fn build(&mut self, names: &[&str], gi: usize) {
        let slot = self.n % 25;
        let age = self.age_at(self.today);
        let demo = slot == 0;
        self.choose_problems(age, demo);
        if !self.male && slot == PREGNANT {
            self.problems.push(Problem { cond: condition("72892002"), onset: self.today - Duration::days(150), id: None, rx: None });
        }
        let r = self.rng.unit();
        self.smoking = if age < 13.0 {
            ("266919005", "Never smoked tobacco (finding)")
        } else if r < 0.12 {
            ("77176002", "Smoker (finding)")
        } else if r < 0.3 || self.has("13645005") {
            ("8517006", "Ex-smoker (finding)")
        } else {
            ("266919005", "Never smoked tobacco (finding)")
        };
        self.food_insecure = demo || self.rng.chance(0.12);
        // An adult's weight from a BMI that fits their problems.
        let height = growth::at(growth::median_height(age.min(20.0), self.male), growth::HEIGHT_SD, self.z_height);
        let bmi = if self.has("162864005") { self.rng.normal(33.5, 2.0) } else { self.rng.normal(25.0, 2.3).clamp(19.5, 29.5) };
        self.adult_weight = bmi * (height / 100.0).powi(2);
        if demo {
            self.lab_offsets = vec![(A1C.code, 0.0), (LDL.code, 1.6), (GLUCOSE.code, 1.0)];
        }

        self.patient(names, gi);
        let visits = self.plan();
        let parent = if age < 18.0 { Some(self.related_person()) } else { None };
        self.coverage(visits.first().map_or(self.today, |v| v.0), parent.as_deref());
        self.allergies(&visits, demo);
        for (k, &(day, kind)) in visits.iter().enumerate() {
            let last = k + 1 == visits.len();
            self.visit(day, kind, last);
        }
        self.care_plans(&visits);
        self.care_team(parent.as_deref());
        self.device();
        self.provenance_for_rest();
    }

    fn choose_problems(&mut self, age: f64, demo: bool) {
        let mut picks: Vec<(&str, f64, f64)> = Vec::new(); // (code, probability, youngest age at onset)
        if demo {
            for code in ["38341003", "44054006", "55822004", "162864005"] {
                picks.push((code, 1.0, 35.0));
            }
        } else if age >= 18.0 {
            let a = age;
            picks.extend([
                ("38341003", ((a - 25.0) / 90.0).clamp(0.0, 0.55), 30.0),
                ("44054006", ((a - 30.0) / 180.0).clamp(0.0, 0.25), 35.0),
                ("55822004", ((a - 30.0) / 120.0).clamp(0.0, 0.35), 35.0),
                ("162864005", 0.15, 20.0),
                ("195967001", 0.07, 5.0),
                ("35489007", 0.1, 18.0),
                ("40055000", 0.05, 18.0),
                ("13645005", if a > 55.0 { 0.1 } else { 0.0 }, 50.0),
                ("49436004", if a > 65.0 { 0.18 } else { 0.0 }, 62.0),
                ("399211009", if a > 55.0 { 0.08 } else { 0.0 }, 50.0),
                ("271737000", if self.male { 0.02 } else { 0.06 }, 18.0),
            ]);
        } else if age >= 3.0 {
            picks.push(("195967001", 0.12, 3.0));
        }
        // The second patient has high blood pressure and atrial fibrillation (and a pacemaker), the third
        // asthma, and one of the very old atrial fibrillation: every seed shows these charts.
        match self.n % 25 {
            1 => picks.extend([("38341003", 1.0, 40.0), ("49436004", 1.0, 62.0)]),
            2 => picks.push(("195967001", 1.0, 5.0)),
            15 => picks.push(("49436004", 1.0, 70.0)),
            _ => {}
        }
        // The pregnant patient is not given hypertension: its medicine here is lisinopril, which is not for
        // pregnancy.
        let expecting = !self.male && self.n % 25 == PREGNANT;
        for (code, p, youngest) in picks {
            if !self.rng.chance(p) || self.problems.iter().any(|q| CONDITIONS[q.cond].0 == code) || (expecting && code == "38341003") {
                continue;
            }
            let earliest = (self.birth + Duration::days((youngest * YEAR) as i64)).max(self.today - Duration::days((20.0 * YEAR) as i64));
            let latest = self.today - Duration::days(90);
            if earliest >= latest {
                continue;
            }
            let onset = if demo {
                // The demo patient's problems began over the years of their record, the oldest first.
                self.today
                    - Duration::days(match code {
                        "38341003" => 3_900,
                        "162864005" => 3_300,
                        "44054006" => 2_900,
                        _ => 2_100,
                    })
            } else {
                earliest + Duration::days(self.rng.range(0, (latest - earliest).whole_days()))
            };
            self.problems.push(Problem { cond: condition(code), onset, id: None, rx: None });
        }
        self.problems.truncate(5);
    }

    fn patient(&mut self, names: &[&str], gi: usize) {
        let n = self.n;
        let (city, state, zip, area) = CITIES[(n * 3 + 1) % CITIES.len()];
        let middle = names[(gi + 11) % names.len()];
        let mrn = format!("{}", 1_000_000 + (n as u64 * 7_919 + 104_729) % 8_999_999);
        let race = if self.rng.chance(0.6) { RACES[0] } else { *self.rng.pick(RACES) };
        let hispanic = self.rng.chance(0.15);
        let (eth_code, eth_display) = if hispanic { ("2135-2", "Hispanic or Latino") } else { ("2186-5", "Not Hispanic or Latino") };
        let email = format!("{}.{}{}@example.com", ascii_lower(self.given), ascii_lower(&self.family), n % 100);
        let mut p = json!({
            "resourceType": "Patient", "id": self.pid, "active": true,
            "extension": [
                {"url": RACE_URL, "extension": [{"url": "ombCategory", "valueCoding": coding(CDC_RACE, race.0, race.1)}, {"url": "text", "valueString": race.1}]},
                {"url": ETHNICITY_URL, "extension": [{"url": "ombCategory", "valueCoding": coding(CDC_RACE, eth_code, eth_display)}, {"url": "text", "valueString": eth_display}]},
                {"url": BIRTH_SEX_URL, "valueCode": if self.male { "M" } else { "F" }}
            ],
            "identifier": [
                {"use": "usual", "type": cc(V2_0203, "MR", "Medical Record Number"), "system": MRN_SYSTEM, "value": mrn},
            ],
            "name": [{"use": "official", "family": self.family, "given": [self.given, middle]}],
            "telecom": [
                {"system": "phone", "value": format!("({area}) 555-01{:02}", n % 100), "use": "home"},
                {"system": "email", "value": email, "use": "home"}
            ],
            "gender": if self.male { "male" } else { "female" },
            "birthDate": date_str(self.birth),
            "address": [{"use": "home", "type": "physical", "line": [format!("{} {}", 10 + (n * 37) % 890, STREETS[n % STREETS.len()])], "city": city, "state": state, "postalCode": zip, "country": "US", "period": {"start": date_str(self.birth)}}],
            "communication": [{"language": cc("urn:ietf:bcp:47", if hispanic && self.rng.chance(0.5) { "es" } else { "en-US" }, if hispanic { "Spanish" } else { "English (United States)" }), "preferred": true}],
            "generalPractitioner": [named_reference("Practitioner", &practitioner_id(self.gp), &clinician_name(self.gp))],
            "managingOrganization": named_reference("Organization", PROVIDERS[self.org].0, PROVIDERS[self.org].1)
        });
        if !hispanic {
            p["communication"][0]["language"] = cc("urn:ietf:bcp:47", "en-US", "English (United States)");
        }
        if self.age_at(self.today) >= 18.0 {
            p["maritalStatus"] = if self.rng.chance(0.55) {
                cc("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "M", "Married")
            } else {
                cc("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "S", "Never Married")
            };
        }
        self.put(p);
    }

    /// The visits, in time order: well visits by age, follow-ups for chronic problems, sick visits, an
    /// emergency or a hospital stay for some.
    fn plan(&mut self) -> Vec<(Date, Kind)> {
        let slot = self.n % 25;
        let today = self.today;
        let age = self.age_at(today);
        let mut out: Vec<(Date, Kind)> = Vec::new();
        if SPARSE.contains(&slot) {
            let day = today - Duration::days(self.rng.range(20, 200));
            out.push((day, Kind::Wellness));
            return out;
        }
        let years = if LONG.contains(&slot) { 15.0 } else { self.rng.range(3, 7) as f64 };
        let start = (today - Duration::days((years * YEAR) as i64)).max(self.birth + Duration::days(3));
        // Well visits: the well-child schedule, then once a year.
        let well_child = [3, 30, 61, 122, 183, 274, 365, 456, 548, 730, 913, 1096];
        let mut d = self.birth;
        for days in well_child {
            d = self.birth + Duration::days(days + self.rng.range(0, 4));
            if d >= start && d < today {
                out.push((d, Kind::Wellness));
            }
        }
        let first_adult = if age < 3.0 { d + Duration::days(365) } else { start + Duration::days(self.rng.range(0, 90)) };
        let mut d = first_adult.max(self.birth + Duration::days(1_461));
        while d < today - Duration::days(7) {
            if d >= start {
                out.push((d, Kind::Wellness));
            }
            d += Duration::days(365 + self.rng.range(-20, 25));
        }
        // The most recent well visit is recent, so the chart has current vitals.
        if let Some(last) = out.iter_mut().rev().find(|v| v.1 == Kind::Wellness)
            && (today - last.0).whole_days() > 200
            && age >= 3.0
        {
            last.0 = today - Duration::days(self.rng.range(10, 60));
        }
        // Follow-ups for blood pressure and diabetes, every four to six months.
        let followed = self.problems.iter().filter(|p| matches!(CONDITIONS[p.cond].0, "38341003" | "44054006" | "49436004")).map(|p| p.onset).min();
        if let Some(onset) = followed {
            let mut d = onset.max(start) + Duration::days(120);
            while d < today - Duration::days(3) {
                if out.iter().all(|v| (v.0 - d).whole_days().abs() > 45) {
                    out.push((d, Kind::FollowUp));
                }
                d += Duration::days(self.rng.range(120, 180));
            }
        }
        // Sick visits: children more often than adults.
        let per_year = if age < 6.0 {
            1.6
        } else if age < 18.0 {
            0.9
        } else {
            0.6
        };
        let span_days = (today - start).whole_days().max(1);
        let n_sick = ((span_days as f64 / YEAR) * per_year).round() as i64 + self.rng.range(0, 1);
        for _ in 0..n_sick {
            let d = start + Duration::days(self.rng.range(0, span_days - 1));
            let a = self.age_at(d);
            let options: &[&str] = if a < 0.5 {
                &["444814009"]
            } else if a < 6.0 {
                &["65363002", "65363002", "444814009", "195662009", "10509002"]
            } else if a < 18.0 {
                &["43878008", "195662009", "444814009", "65363002", "10509002"]
            } else if self.male {
                &["444814009", "195662009", "10509002", "43878008"]
            } else {
                &["444814009", "195662009", "10509002", "68566005", "68566005"]
            };
            let code = *self.rng.pick(options);
            out.push((d, Kind::Sick(condition(code))));
        }
        // An emergency for some: a sprained ankle, or pneumonia that needs a hospital stay for the old
        // and the very young.
        if age >= 1.0 && self.rng.chance(if slot == 0 || slot == 1 { 1.0 } else { 0.35 }) {
            let d = start + Duration::days(self.rng.range(0, span_days - 1));
            let a = self.age_at(d);
            if a >= 60.0 || slot == 1 {
                out.push((d, Kind::Inpatient(condition("233604007"))));
            } else if a >= 6.0 {
                out.push((d, Kind::Emergency(condition("44465007"))));
            }
        }
        out.retain(|v| v.0 >= start && v.0 < today && v.0 > self.birth);
        out.sort_by_key(|v| v.0);
        out.dedup_by_key(|v| v.0);
        out
    }

    fn related_person(&mut self) -> String {
        let id = self.id("related");
        let mother = self.rng.chance(0.6);
        let given = *self.rng.pick(if mother { GIVEN_FEMALE } else { GIVEN_MALE });
        let (code, display) = if mother { ("MTH", "mother") } else { ("FTH", "father") };
        let (city, state, zip, area) = CITIES[(self.n * 3 + 1) % CITIES.len()];
        self.put(json!({
            "resourceType": "RelatedPerson", "id": id, "active": true,
            "patient": self.patient_ref(),
            "relationship": [cc(ROLE_CODE, code, display)],
            "name": [{"use": "official", "family": self.family, "given": [given]}],
            "telecom": [{"system": "phone", "value": format!("({area}) 555-01{:02}", self.n % 100), "use": "mobile"}],
            "gender": if mother { "female" } else { "male" },
            "address": [{"use": "home", "city": city, "state": state, "postalCode": zip, "country": "US"}]
        }));
        id
    }

    fn coverage(&mut self, start: Date, parent: Option<&str>) {
        let age = self.age_at(self.today);
        let payer = if age >= 65.0 {
            1
        } else if age < 18.0 && self.n.is_multiple_of(3) {
            2
        } else {
            0
        };
        let (payer_id, payer_name, code, display) = PAYERS[payer];
        let id = self.id("coverage");
        let member = format!("{}{:09}", ["BSH", "MCR", "MAH"][payer], (self.n as u64 * 104_729 + 7) % 1_000_000_000);
        let plan = [("PPO-2", "Bay State PPO"), ("PART-A-B", "Original Medicare Parts A and B"), ("STD-A", "MassHealth Standard")][payer];
        let mut c = json!({
            "resourceType": "Coverage", "id": id, "status": "active",
            "identifier": [{"type": cc(V2_0203, "MB", "Member Number"), "system": MEMBER_ID_SYSTEM, "value": member}],
            "type": cc(PAYER_TYPE, code, display),
            "subscriberId": member,
            "beneficiary": self.patient_ref(),
            "relationship": cc(SUBSCRIBER_RELATIONSHIP, "self", "Self"),
            "period": {"start": date_str(start)},
            "payor": [named_reference("Organization", payer_id, payer_name)],
            "class": [
                {"type": cc(COVERAGE_CLASS, "group", "Group"), "value": format!("GRP{:05}", 10_000 + self.n % 90_000), "name": format!("{payer_name} group")},
                {"type": cc(COVERAGE_CLASS, "plan", "Plan"), "value": plan.0, "name": plan.1}
            ]
        });
        if let Some(parent) = parent
            && payer == 0
        {
            c["subscriber"] = reference("RelatedPerson", parent);
            c["policyHolder"] = reference("RelatedPerson", parent);
            c["relationship"] = cc(SUBSCRIBER_RELATIONSHIP, "child", "Child");
        }
        self.put(c);
    }

    fn allergies(&mut self, visits: &[(Date, Kind)], demo: bool) {
        let chosen: Vec<usize> = if demo {
            vec![0, 1]
        } else if self.rng.chance(0.35) {
            let a = self.rng.below(ALLERGIES.len() as u64) as usize;
            let b = self.rng.below(ALLERGIES.len() as u64) as usize;
            if a == b || self.rng.chance(0.6) { vec![a] } else { vec![a, b] }
        } else {
            vec![]
        };
        for i in chosen {
            let (code, display, category, criticality, rcode, rdisplay) = ALLERGIES[i];
            let recorded = visits.get(self.rng.below(visits.len().max(1) as u64) as usize).map_or(self.today, |v| v.0);
            let id = self.id("allergy");
            let onset = (recorded - Duration::days(self.rng.range(30, 2_000))).max(self.birth + Duration::days(180)).min(recorded);
            self.put(json!({
                "resourceType": "AllergyIntolerance", "id": id,
                "clinicalStatus": cc(ALLERGY_CLINICAL, "active", "Active"),
                "verificationStatus": cc(ALLERGY_VER, "confirmed", "Confirmed"),
                "type": "allergy", "category": [category], "criticality": criticality,
                "code": cc(SNOMED, code, display),
                "patient": self.patient_ref(),
                "onsetDateTime": date_str(onset),
                "recordedDate": date_str(recorded),
                "recorder": reference("Practitioner", &practitioner_id(self.gp)),
                "reaction": [{"manifestation": [cc(SNOMED, rcode, rdisplay)], "severity": if criticality == "high" { "severe" } else { "mild" }}]
            }));
        }
    }

    fn visit(&mut self, day: Date, kind: Kind, last: bool) {
        let age = self.age_at(day);
        let hour = self.rng.range(8, 16) as u8;
        let minute = [0u8, 15, 30, 45][self.rng.below(4) as usize];
        let start = PrimitiveDateTime::new(day, Time::from_hms(hour, minute, 0).unwrap_or(Time::MIDNIGHT));
        let (minutes, clinician, location, org) = match kind {
            Kind::Wellness => (self.rng.range(30, 50), self.gp, CLINICIANS[self.gp].location, self.org),
            Kind::FollowUp => (
                self.rng.range(20, 30),
                if self.has("49436004") && self.rng.chance(0.5) { CARDIOLOGIST } else { self.gp },
                CLINICIANS[self.gp].location,
                self.org,
            ),
            Kind::Sick(_) => {
                let c = if age < 18.0 {
                    PEDIATRICIAN
                } else if self.rng.chance(0.5) {
                    NURSE_PRACTITIONER
                } else {
                    self.gp
                };
                (self.rng.range(15, 30), c, CLINICIANS[c].location, CLINICIANS[c].org)
            }
            Kind::Emergency(_) => (self.rng.range(150, 360), EMERGENCY_DOCTOR, "kp-location-ed", 0),
            Kind::Inpatient(_) => (self.rng.range(3, 5) * 24 * 60 + self.rng.range(-180, 180), HOSPITALIST, "kp-location-ward", 0),
        };
        let end = start + Duration::minutes(minutes);
        if end.date() >= self.today {
            return;
        }
        let enc = Enc { id: self.id("enc"), start, end, clinician, location, org };
        self.last_visit = Some(end);
        let (class, class_display) = match kind {
            Kind::Emergency(_) => ("EMER", "emergency"),
            Kind::Inpatient(_) => ("IMP", "inpatient encounter"),
            _ => ("AMB", "ambulatory"),
        };
        let (type_code, type_display) = match kind {
            Kind::Wellness if age < 18.0 => ("410620009", "Well child visit (procedure)"),
            Kind::Wellness => ("162673000", "General examination of patient (procedure)"),
            Kind::FollowUp => ("390906007", "Follow-up encounter (procedure)"),
            Kind::Sick(_) => ("185345009", "Encounter for symptom (procedure)"),
            Kind::Emergency(_) => ("50849002", "Emergency room admission (procedure)"),
            Kind::Inpatient(_) => ("32485007", "Hospital admission (procedure)"),
        };
        let mut e = json!({
            "resourceType": "Encounter", "id": enc.id, "status": "finished",
            "identifier": [{"use": "official", "system": ENCOUNTER_ID_SYSTEM, "value": format!("V{}", 30_000_000 + self.counter * 31 + self.n * 100_003)}],
            "class": coding(ACT_CODE, class, class_display),
            "type": [cc(SNOMED, type_code, type_display)],
            "subject": self.patient_ref(),
            "participant": [{
                "type": [cc("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "PPRF", "primary performer")],
                "period": {"start": datetime_str(start), "end": datetime_str(end)},
                "individual": named_reference("Practitioner", &practitioner_id(clinician), &clinician_name(clinician))
            }],
            "period": {"start": datetime_str(start), "end": datetime_str(end)},
            "location": [{"location": reference("Location", location), "status": "completed", "period": {"start": datetime_str(start), "end": datetime_str(end)}}],
            "serviceProvider": named_reference("Organization", PROVIDERS[org].0, PROVIDERS[org].1)
        });
        match kind {
            Kind::Sick(c) | Kind::Emergency(c) | Kind::Inpatient(c) => e["reasonCode"] = json!([cc(SNOMED, CONDITIONS[c].0, CONDITIONS[c].1)]),
            Kind::FollowUp => {
                let reasons: Vec<Value> = self
                    .problems
                    .iter()
                    .filter(|p| p.onset <= day && matches!(CONDITIONS[p.cond].0, "38341003" | "44054006" | "49436004"))
                    .map(|p| cc(SNOMED, CONDITIONS[p.cond].0, CONDITIONS[p.cond].1))
                    .collect();
                if !reasons.is_empty() {
                    e["reasonCode"] = json!(reasons);
                }
            }
            Kind::Wellness => {}
        }
        if matches!(kind, Kind::Emergency(_) | Kind::Inpatient(_)) {
            e["hospitalization"] = json!({
                "admitSource": cc(ADMIT_SOURCE, if matches!(kind, Kind::Inpatient(_)) { "emd" } else { "other" }, if matches!(kind, Kind::Inpatient(_)) { "From accident/emergency department" } else { "Other" }),
                "dischargeDisposition": cc(DISCHARGE_DISPOSITION, "home", "Home")
            });
        }
        if let Kind::Inpatient(_) = kind {
            // The stay began in the emergency department.
            let ed_end = start + Duration::minutes(150);
            e["location"] = json!([
                {"location": reference("Location", "kp-location-ed"), "status": "completed", "period": {"start": datetime_str(start), "end": datetime_str(ed_end)}},
                {"location": reference("Location", "kp-location-ward"), "status": "completed", "period": {"start": datetime_str(ed_end), "end": datetime_str(end)}}
            ]);
        }
        self.put(e);

        // Problems first recorded at this visit.
        self.record_problems(&enc, day);
        let mut note: Vec<String> = Vec::new();
        match kind {
            Kind::Sick(c) | Kind::Emergency(c) => {
                let cid = self.acute_condition(&enc, c);
                note.push(format!("Assessment: {}.", CONDITIONS[c].1.trim_end_matches(" (disorder)")));
                self.acute_treatment(&enc, c, &cid);
            }
            Kind::Inpatient(c) => {
                let cid = self.acute_condition(&enc, c);
                note.push(format!("Admitted from the emergency department with {}.", CONDITIONS[c].1.trim_end_matches(" (disorder)").to_lowercase()));
                self.hospital_stay(&enc, &cid);
            }
            _ => {}
        }
        let vitals = self.vitals(&enc, kind);
        note.push(vitals);
        if kind == Kind::Wellness || kind == Kind::FollowUp {
            self.renew_prescriptions(&enc, day, kind == Kind::Wellness || last);
        }
        if kind == Kind::Wellness {
            self.wellness_extras(&enc, age, last);
        }
        if kind == Kind::FollowUp && self.has("44054006") {
            self.panel(&enc, &HBA1C, None);
        }
        if matches!(kind, Kind::Wellness | Kind::Inpatient(_) | Kind::Emergency(_)) {
            self.note(&enc, kind, &note);
        }
        self.provenance(&enc);
    }

    fn record_problems(&mut self, enc: &Enc, day: Date) {
        for i in 0..self.problems.len() {
            if self.problems[i].id.is_some() || self.problems[i].onset > day {
                continue;
            }
            let cond = self.problems[i].cond;
            let onset = self.problems[i].onset;
            let (code, display, _, med) = CONDITIONS[cond];
            let id = self.id("cond");
            let pregnancy = code == "72892002";
            let health_concern = code == "733423003";
            let (cat_system, cat_code, cat_display) = if health_concern {
                (CONDITION_CATEGORY_US_CORE, "health-concern", "Health Concern")
            } else {
                (CONDITION_CATEGORY, "problem-list-item", "Problem List Item")
            };
            let mut category = vec![cc(cat_system, cat_code, cat_display)];
            if health_concern {
                category.push(cc(US_CORE_CATEGORY, "sdoh", "SDOH"));
            }
            self.put(json!({
                "resourceType": "Condition", "id": id,
                // US Core problems and health concerns: when the clinician first asserted it (this visit).
                "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/condition-assertedDate", "valueDateTime": date_str(enc.start.date())}],
                "clinicalStatus": cc(CONDITION_CLINICAL, "active", "Active"),
                "verificationStatus": cc(CONDITION_VER, "confirmed", "Confirmed"),
                "category": category,
                "code": cc(SNOMED, code, display),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "onsetDateTime": date_str(onset),
                "recordedDate": enc.at(10),
                "recorder": reference("Practitioner", &practitioner_id(enc.clinician)),
                "asserter": reference("Practitioner", &practitioner_id(enc.clinician)),
                "note": if pregnancy { json!([{"text": format!("Estimated due date {}.", date_str(onset + Duration::days(280)))}]) } else { json!([{"text": "Added to the problem list."}]) }
            }));
            self.problems[i].id = Some(id.clone());
            if let Some(m) = med {
                let rx = self.prescribe(enc, m, &id, true);
                self.problems[i].rx = Some((rx, day));
            }
            if matches!(code, "49436004" | "399211009") {
                self.referral(enc, "183519002", "Referral to cardiology service (procedure)", "3457005", "Patient referral", Some(&id));
            }
        }
    }

    /// Renews the long-term prescriptions once a year (the old order completes), and fills them.
    fn renew_prescriptions(&mut self, enc: &Enc, day: Date, renew: bool) {
        for i in 0..self.problems.len() {
            let Some((old, since)) = self.problems[i].rx.clone() else { continue };
            let Some(cid) = self.problems[i].id.clone() else { continue };
            if !renew || (day - since).whole_days() < 300 {
                continue;
            }
            let Some(m) = CONDITIONS[self.problems[i].cond].3 else { continue };
            self.complete_order(&old);
            let rx = self.prescribe(enc, m, &cid, true);
            self.problems[i].rx = Some((rx, day));
        }
    }

    /// Marks an earlier order completed by rewriting its entry.
    fn complete_order(&mut self, id: &str) {
        if let Some(e) = self.b.entries.iter_mut().rev().find(|e| e["resource"]["id"] == id) {
            e["resource"]["status"] = json!("completed");
        }
    }

    /// A prescription for MEDICATIONS[m], with its fills: every 90 days while it lasts for long-term
    /// medicines that are still active, once for a short course.
    fn prescribe(&mut self, enc: &Enc, m: usize, reason: &str, long_term: bool) -> String {
        let (rx, display, dosage) = MEDICATIONS[m];
        self.prescribe_product(enc, (rx, display, dosage), reason, long_term)
    }

    /// What a sick visit prescribes for MEDICATIONS[m] at the patient's age: the adult product from 12
    /// years, a child's product dosed by weight from 2 ([`CHILD_MEDICATIONS`]), nothing under 2.
    fn acute_product(&self, day: Date, m: usize) -> Option<(&'static str, &'static str, String)> {
        let age = self.age_at(day);
        if age >= 12.0 {
            let (rx, display, dosage) = MEDICATIONS[m];
            return Some((rx, display, dosage.to_string()));
        }
        if age < 2.0 {
            return None;
        }
        let &(_, rx, display, mg_per_unit, mg_per_kg, most, dosage) = CHILD_MEDICATIONS.iter().find(|c| c.0 == m)?;
        // The weight the growth tables give this child (its own centile), without drawing from the stream.
        let weight = growth::at(growth::median_weight(age, self.male), growth::WEIGHT_SD, self.z_weight);
        let units = ((weight * mg_per_kg / mg_per_unit).floor() as u32).clamp(1, most);
        Some((rx, display, dosage.replace("{n}", &units.to_string())))
    }

    fn prescribe_product(&mut self, enc: &Enc, product: (&str, &str, &str), reason: &str, long_term: bool) -> String {
        let (rx, display, dosage) = product;
        let id = self.id("medrx");
        let frequency = if dosage.contains("twice") {
            2
        } else if dosage.contains("three times") {
            3
        } else if dosage.contains("four times") || dosage.contains("every 6 hours") {
            4
        } else if dosage.contains("every 8 hours") {
            3
        } else {
            1
        };
        // A short course lasts what its dosage says ("for 7 days"), else ten days; it is active until then.
        let course: i64 = dosage.split("for ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(10);
        let active = long_term || enc.start.date() + Duration::days(course) > self.today;
        let per_dose: i64 = dosage.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(1);
        let route = if display.contains("Inhaler") { cc(SNOMED, "447694001", "Respiratory tract route") } else { cc(SNOMED, "26643006", "Oral route") };
        self.put(json!({
            "resourceType": "MedicationRequest", "id": id,
            "identifier": [{"system": ORDER_SYSTEM, "value": format!("RX{}", 500_000 + self.counter * 7 + self.n * 10_007)}],
            "status": if active { "active" } else { "completed" },
            "intent": "order",
            "category": [cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category", if long_term { "community" } else { "outpatient" }, if long_term { "Community" } else { "Outpatient" })],
            "reportedBoolean": false,
            "medicationCodeableConcept": cc(RXNORM, rx, display),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "authoredOn": enc.at(15),
            "requester": named_reference("Practitioner", &practitioner_id(enc.clinician), &clinician_name(enc.clinician)),
            "reasonReference": [reference("Condition", reason)],
            "dosageInstruction": [{"text": dosage, "timing": {"repeat": {"frequency": frequency, "period": 1, "periodUnit": "d"}}, "route": route}],
            "dispenseRequest": {"numberOfRepeatsAllowed": if long_term { 3 } else { 0 }, "expectedSupplyDuration": {"value": if long_term { 90 } else { course }, "unit": "days", "system": UCUM, "code": "d"}}
        }));
        // Fills: a short course once; a long-term medicine every 90 days within the year it covers.
        let fills = if long_term { 4 } else { 1 };
        for k in 0..fills {
            let when = enc.start.date() + Duration::days(k * 90 + if k == 0 { 0 } else { self.rng.range(-5, 5) });
            if when >= self.today {
                break;
            }
            let did = self.id("dispense");
            let handed = PrimitiveDateTime::new(when, Time::from_hms(17, 30, 0).unwrap_or(Time::MIDNIGHT));
            let days = if long_term { 90 } else { course };
            let (quantity, form, form_code) = if display.contains("Inhaler") {
                (days / 30, "inhaler", "MDINHL")
            } else if display.contains("Capsule") {
                (frequency * days * per_dose, "capsule", "CAP")
            } else {
                (frequency * days * per_dose, "tablet", "TAB")
            };
            self.put(json!({
                "resourceType": "MedicationDispense", "id": did, "status": "completed",
                "medicationCodeableConcept": cc(RXNORM, rx, display),
                "subject": self.patient_ref(),
                "context": reference("Encounter", &enc.id),
                "authorizingPrescription": [reference("MedicationRequest", &id)],
                "type": cc(ACT_PHARMACY_SUPPLY, if k == 0 { "FF" } else { "RF" }, if k == 0 { "First Fill" } else { "Refill" }),
                "quantity": {"value": quantity, "unit": form, "system": "http://terminology.hl7.org/CodeSystem/v3-orderableDrugForm", "code": form_code},
                "daysSupply": {"value": days, "unit": "days", "system": UCUM, "code": "d"},
                "whenPrepared": datetime_str(handed - Duration::minutes(45)),
                "whenHandedOver": datetime_str(handed),
                "dosageInstruction": [{"text": dosage}]
            }));
        }
        id
    }

    fn acute_condition(&mut self, enc: &Enc, c: usize) -> String {
        let (code, display, _, _) = CONDITIONS[c];
        let id = self.id("cond");
        let resolved = enc.start.date() + Duration::days(self.rng.range(7, 21));
        let done = resolved < self.today;
        let mut r = json!({
            "resourceType": "Condition", "id": id,
            "clinicalStatus": if done { cc(CONDITION_CLINICAL, "resolved", "Resolved") } else { cc(CONDITION_CLINICAL, "active", "Active") },
            "verificationStatus": cc(CONDITION_VER, "confirmed", "Confirmed"),
            "category": [cc(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
            "code": cc(SNOMED, code, display),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "onsetDateTime": datetime_str((enc.start - Duration::days(self.rng.range(1, 4))).max(PrimitiveDateTime::new(self.birth, Time::MIDNIGHT))),
            "recordedDate": enc.at(10),
            "recorder": reference("Practitioner", &practitioner_id(enc.clinician)),
            "asserter": reference("Practitioner", &practitioner_id(enc.clinician))
        });
        if done {
            r["abatementDateTime"] = json!(date_str(resolved));
        }
        self.put(r);
        id
    }

    fn acute_treatment(&mut self, enc: &Enc, c: usize, cid: &str) {
        let code = CONDITIONS[c].0;
        let mut med = CONDITIONS[c].3;
        // No penicillins for the allergic.
        let allergic = self.b.entries.iter().any(|e| e["resource"]["code"]["coding"][0]["code"] == "91936005");
        if allergic && matches!(med, Some(7) | Some(10)) {
            med = Some(6);
        }
        if code == "43878008" || code == "195662009" {
            let id = self.id("proc");
            self.put(json!({
                "resourceType": "Procedure", "id": id, "status": "completed",
                "code": cc(SNOMED, "117015009", "Throat culture (procedure)"),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "performedDateTime": enc.at(10),
                "performer": [{"actor": reference("Practitioner", &practitioner_id(enc.clinician))}],
                "reasonReference": [reference("Condition", cid)]
            }));
        }
        if let Some((rx, display, dosage)) = med.and_then(|m| self.acute_product(enc.start.date(), m)) {
            self.prescribe_product(enc, (rx, display, &dosage), cid, false);
        }
    }

    fn hospital_stay(&mut self, enc: &Enc, cid: &str) {
        let id = self.id("proc");
        self.put(json!({
            "resourceType": "Procedure", "id": id, "status": "completed",
            "code": cc(SNOMED, "399208008", "Plain chest X-ray (procedure)"),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "performedDateTime": enc.at(60),
            "performer": [{"actor": reference("Practitioner", &practitioner_id(EMERGENCY_DOCTOR))}],
            "location": reference("Location", "kp-location-ed"),
            "reasonReference": [reference("Condition", cid)]
        }));
        self.panel(enc, &BLOOD_COUNT, Some(14.5));
        self.panel(enc, &BASIC_METABOLIC, None);
        let days = ((enc.end - enc.start).whole_hours() / 24).max(1);
        for (mid, rx, display, dosage) in HOSPITAL_MEDICATIONS {
            if *mid == "kp-med-azithromycin" && self.rng.chance(0.3) {
                continue;
            }
            let id = self.id("medrx");
            self.put(json!({
                "resourceType": "MedicationRequest", "id": id, "status": "completed", "intent": "order",
                "category": [cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category", "inpatient", "Inpatient")],
                "reportedBoolean": false,
                "medicationReference": named_reference("Medication", mid, display),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "authoredOn": enc.at(120),
                "requester": named_reference("Practitioner", &practitioner_id(HOSPITALIST), &clinician_name(HOSPITALIST)),
                "reasonReference": [reference("Condition", cid)],
                "dosageInstruction": [{"text": dosage, "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "boundsDuration": {"value": days, "unit": "days", "system": UCUM, "code": "d"}}}}],
                "note": [{"text": format!("RxNorm {rx}")}]
            }));
        }
    }

    /// Vital signs of the visit, and a line for the note.
    fn vitals(&mut self, enc: &Enc, kind: Kind) -> String {
        let day = enc.start.date();
        let age = self.age_at(day);
        let fever = matches!(kind, Kind::Sick(c) | Kind::Inpatient(c) if !matches!(CONDITIONS[c].0, "44465007" | "68566005"));
        let pneumonia = matches!(kind, Kind::Inpatient(_));
        let (hr_mean, rr_mean) = if age < 1.0 {
            (135.0, 38.0)
        } else if age < 3.0 {
            (115.0, 28.0)
        } else if age < 6.0 {
            (100.0, 24.0)
        } else if age < 12.0 {
            (88.0, 20.0)
        } else {
            (72.0, 15.0)
        };
        let hr = self.rng.normal(hr_mean + if fever { 12.0 } else { 0.0 }, hr_mean * 0.07);
        let rr = self.rng.normal(rr_mean + if pneumonia { 8.0 } else { 0.0 }, rr_mean * 0.08);
        let temp = if fever { self.rng.normal(38.4, 0.4) } else { self.rng.normal(36.8, 0.2) };
        let spo2 = if pneumonia { self.rng.normal(91.5, 1.0) } else { self.rng.normal(98.0, 0.8) }.min(100.0);
        let (height, weight) = if age < 20.0 {
            let h = growth::at(growth::median_height(age, self.male), growth::HEIGHT_SD, self.z_height);
            let w = growth::at(growth::median_weight(age, self.male), growth::WEIGHT_SD, self.z_weight + self.rng.normal(0.0, 0.1));
            (h, w)
        } else {
            let h = growth::at(growth::median_height(20.0, self.male), growth::HEIGHT_SD, self.z_height) - if age > 70.0 { (age - 70.0) * 0.15 } else { 0.0 };
            // Weight drifts: a random walk around the patient's own weight.
            self.adult_weight = (self.adult_weight + self.rng.normal(0.05, 0.6)).clamp(h * h / 10_000.0 * 18.5, h * h / 10_000.0 * 42.0);
            (h, self.adult_weight)
        };
        let bmi = weight / (height / 100.0).powi(2);
        let hypertensive = self.active_at("38341003", day);
        let (sys_mean, dia_mean) = if age < 1.0 {
            (85.0, 50.0)
        } else if age < 6.0 {
            (96.0, 58.0)
        } else if age < 13.0 {
            (104.0, 64.0)
        } else if age < 18.0 {
            (112.0, 70.0)
        } else if hypertensive {
            (142.0 + age * 0.1, 88.0)
        } else {
            (112.0 + age * 0.2, 72.0 + age * 0.05)
        };
        let child_scale = if age < 18.0 { 0.4 } else { 1.0 };
        let systolic = self.rng.normal(sys_mean + self.bp_offset * child_scale, 6.0).round();
        let diastolic = self.rng.normal(dia_mean + self.bp_offset * 0.5 * child_scale, 4.0).round().min(systolic - 25.0);

        let mut measured: Vec<(&str, &str, f64, &str, u32)> = vec![
            ("8867-4", "Heart rate", hr, "/min", 0),
            ("9279-1", "Respiratory rate", rr, "/min", 0),
            ("8310-5", "Body temperature", temp, "Cel", 1),
            ("29463-7", "Body weight", weight, "kg", if age < 2.0 { 2 } else { 1 }),
            (if age < 2.0 { "8306-3" } else { "8302-2" }, if age < 2.0 { "Body height --lying" } else { "Body height" }, height, "cm", 1),
        ];
        if age >= 2.0 {
            measured.push(("39156-5", "Body mass index (BMI) [Ratio]", bmi, "kg/m2", 1));
        }
        if age < 3.0 {
            let head = growth::at(growth::median_head(age, self.male), growth::HEAD_SD, self.z_head);
            measured.push(("9843-4", "Head Occipital-frontal circumference", head, "cm", 1));
            measured.push(("8289-1", "Head Occipital-frontal circumference Percentile", growth::percentile(self.z_head), "%", 1));
        }
        if age < 2.0 {
            // Weight for length: how the child's weight compares with children of the same length.
            measured.push(("77606-2", "Weight-for-length Per age and sex", growth::percentile(self.z_weight - 0.8 * self.z_height), "%", 1));
        } else if age < 20.0 {
            let median_bmi = growth::median_weight(age, self.male) / (growth::median_height(age, self.male) / 100.0).powi(2);
            let z = (bmi / median_bmi).ln() / 0.13;
            measured.push(("59576-9", "Body mass index (BMI) [Percentile] Per age and sex", growth::percentile(z), "%", 1));
        }
        let category = json!([{"coding": [coding(OBS_CATEGORY, "vital-signs", "Vital Signs")], "text": "Vital Signs"}]);
        for (code, display, value, unit, decimals) in measured {
            let id = self.id("obs");
            let mut o = json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "category": category,
                "code": cc(LOINC, code, display),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "effectiveDateTime": enc.at(5),
                "issued": format!("{}.000Z", enc.at(6).trim_end_matches('Z')),
                "performer": [reference("Practitioner", &practitioner_id(enc.clinician))],
                "valueQuantity": {"value": round(value, decimals), "unit": unit, "system": UCUM, "code": unit}
            });
            if code == "8310-5" && fever {
                o["interpretation"] = json!([cc(INTERPRETATION, "H", "High")]);
            }
            self.put(o);
        }
        let id = self.id("obs");
        self.put(json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": category,
            "code": {"coding": [coding(LOINC, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry"), coding(LOINC, "2708-6", "Oxygen saturation in Arterial blood")], "text": "Oxygen saturation"},
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "effectiveDateTime": enc.at(5),
            "performer": [reference("Practitioner", &practitioner_id(enc.clinician))],
            "valueQuantity": {"value": round(spo2, 0), "unit": "%", "system": UCUM, "code": "%"},
            "interpretation": if spo2 < 94.0 { json!([cc(INTERPRETATION, "L", "Low")]) } else { json!([cc(INTERPRETATION, "N", "Normal")]) }
        }));
        if age >= 3.0 {
            let id = self.id("obs");
            let component = |code: &str, display: &str, v: f64| json!({"code": cc(LOINC, code, display), "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}});
            let mut bp = json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "category": category,
                "code": cc(LOINC, "85354-9", "Blood pressure panel with all children optional"),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "effectiveDateTime": enc.at(5),
                "performer": [reference("Practitioner", &practitioner_id(enc.clinician))],
                "component": [component("8480-6", "Systolic blood pressure", systolic), component("8462-4", "Diastolic blood pressure", diastolic)]
            });
            if age >= 18.0 && (systolic >= 140.0 || diastolic >= 90.0) {
                bp["interpretation"] = json!([cc(INTERPRETATION, "H", "High")]);
            }
            self.put(bp);
        }
        let mut line =
            format!("Vital signs: weight {:.1} kg, height {:.1} cm, heart rate {:.0}/min, temperature {:.1} °C, SpO2 {:.0}%", weight, height, hr, temp, spo2);
        if age >= 3.0 {
            line.push_str(&format!(", blood pressure {systolic:.0}/{diastolic:.0} mmHg"));
        }
        line.push('.');
        line
    }

    fn wellness_extras(&mut self, enc: &Enc, age: f64, last: bool) {
        let day = enc.start.date();
        let age_days = (day - self.birth).whole_days();
        // Immunisations due since the previous well visit (or since the records began).
        let previous = self
            .b
            .entries
            .iter()
            .rev()
            .filter(|e| {
                e["resource"]["resourceType"] == "Encounter"
                    && matches!(e["resource"]["type"][0]["coding"][0]["code"].as_str(), Some("410620009" | "162673000"))
            })
            .nth(1)
            .and_then(|e| e["resource"]["period"]["start"].as_str().map(str::to_string));
        let from_age = match &previous {
            Some(p) => parse_day(p).map_or(age_days, |d| (d - self.birth).whole_days()),
            None => age_days - 120,
        };
        let due: Vec<(&str, &str)> = IMMUNIZATION_SCHEDULE.iter().filter(|(a, _, _)| *a > from_age && *a <= age_days).map(|(_, c, d)| (*c, *d)).collect();
        let mut given: Vec<&str> = Vec::new();
        for (cvx, display) in due {
            if !given.contains(&cvx) {
                given.push(cvx);
                self.immunization(enc, cvx, display, None);
            }
        }
        let had_flu_shot = self.b.entries.iter().rev().any(|e| {
            e["resource"]["vaccineCode"]["coding"][0]["code"] == INFLUENZA.0
                && e["resource"]["occurrenceDateTime"].as_str().and_then(parse_day).is_some_and(|d| (day - d).whole_days() < 200)
        });
        if age >= 0.5 && matches!(day.month() as u8, 9..=12 | 1) && !had_flu_shot {
            let declined = age >= 18.0 && self.n % 7 == 3;
            self.immunization(enc, INFLUENZA.0, INFLUENZA.1, declined.then_some(("PATOBJ", "patient objection")));
        }
        if age >= 18.0 {
            let id = self.id("proc");
            self.put(json!({
                "resourceType": "Procedure", "id": id, "status": "completed",
                "code": cc(SNOMED, "430193006", "Medication Reconciliation (procedure)"),
                "subject": self.patient_ref(), "encounter": reference("Encounter", &enc.id),
                "performedDateTime": enc.at(20),
                "performer": [{"actor": reference("Practitioner", &practitioner_id(enc.clinician))}]
            }));
            if age >= 12.0 && self.rng.chance(0.3) {
                let id = self.id("proc");
                self.put(json!({
                    "resourceType": "Procedure", "id": id, "status": "completed",
                    "code": cc(SNOMED, "171207006", "Depression screening (procedure)"),
                    "subject": self.patient_ref(), "encounter": reference("Encounter", &enc.id),
                    "performedDateTime": enc.at(12),
                    "performer": [{"actor": reference("Practitioner", &practitioner_id(enc.clinician))}]
                }));
            }
            if !self.male && (50.0..75.0).contains(&age) && self.rng.chance(0.5) {
                self.referral(enc, "24623002", "Screening mammography (procedure)", "363679005", "Imaging", None);
            }
            if (45.0..76.0).contains(&age) && self.rng.chance(0.15) {
                let id = self.id("proc");
                self.put(json!({
                    "resourceType": "Procedure", "id": id, "status": "completed",
                    "code": cc(SNOMED, "73761001", "Colonoscopy (procedure)"),
                    "subject": self.patient_ref(), "encounter": reference("Encounter", &enc.id),
                    "performedDateTime": enc.at(25),
                    "performer": [{"actor": reference("Practitioner", &practitioner_id(INTERNIST))}]
                }));
            }
            // Laboratory: metabolic and lipid panels for adults, more often with age and problems.
            let chronic = self.has("38341003") || self.has("44054006") || self.has("55822004");
            if last || chronic || self.rng.chance(if age > 40.0 { 0.6 } else { 0.3 }) {
                self.panel(enc, &BASIC_METABOLIC, None);
                self.panel(enc, &LIPID, None);
            }
            if last || self.rng.chance(0.35) {
                self.panel(enc, &BLOOD_COUNT, None);
            }
            if self.active_at("44054006", day) || (age > 45.0 && self.rng.chance(0.3)) {
                self.panel(enc, &HBA1C, None);
            }
        }
        if age >= 13.0 {
            self.coded_observation(enc, "social-history", "72166-2", "Tobacco smoking status", (SNOMED, self.smoking.0, self.smoking.1));
        }
        if !self.male && (15.0..50.0).contains(&age) {
            let pregnant = self.active_at("72892002", day);
            let value = if pregnant { ("77386006", "Pregnant (finding)") } else { ("60001007", "Not pregnant (finding)") };
            self.coded_observation(enc, "social-history", "82810-3", "Pregnancy status", (SNOMED, value.0, value.1));
        }
        let first_adult_visit = age >= 18.0 && !self.b.entries.iter().any(|e| e["resource"]["code"]["coding"][0]["code"] == "76690-7");
        if first_adult_visit {
            let value = match self.n % 11 {
                4 => ("38628009", "Homosexual (finding)"),
                7 => ("42035005", "Bisexual (finding)"),
                _ => ("20430005", "Heterosexual (finding)"),
            };
            self.coded_observation(enc, "social-history", "76690-7", "Sexual orientation", (SNOMED, value.0, value.1));
        }
        if age >= 18.0 && (last || self.rng.chance(0.3)) {
            self.hunger_screen(enc, last);
        }
    }

    fn immunization(&mut self, enc: &Enc, cvx: &str, display: &str, not_done: Option<(&str, &str)>) {
        let id = self.id("imm");
        let mut r = json!({
            "resourceType": "Immunization", "id": id,
            "status": if not_done.is_some() { "not-done" } else { "completed" },
            "vaccineCode": cc(CVX, cvx, display),
            "patient": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "occurrenceDateTime": enc.at(25),
            "recorded": enc.at(26),
            "primarySource": true,
            "location": reference("Location", enc.location),
            "performer": [{"function": cc("http://terminology.hl7.org/CodeSystem/v2-0443", "AP", "Administering Provider"), "actor": reference("Practitioner", &practitioner_id(enc.clinician))}]
        });
        match not_done {
            Some((code, display)) => r["statusReason"] = cc("http://terminology.hl7.org/CodeSystem/v3-ActReason", code, display),
            None => {
                r["lotNumber"] = json!(format!("{}{:05}", ["EK", "FH", "U7", "Y3"][self.counter % 4], self.rng.below(100_000)));
                r["expirationDate"] = json!(date_str(enc.start.date() + Duration::days(self.rng.range(120, 600))));
                // By the vaccine: rotavirus is swallowed (no site), MMR and varicella go under the skin.
                const ROUTE: &str = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration";
                r["route"] = match cvx {
                    "119" => cc(ROUTE, "PO", "Swallow, oral"),
                    "03" | "21" => cc(ROUTE, "SQ", "Injection, subcutaneous"),
                    _ => cc(ROUTE, "IM", "Injection, intramuscular"),
                };
                if cvx != "119" {
                    r["site"] = if self.age_at(enc.start.date()) < 3.0 {
                        cc("http://terminology.hl7.org/CodeSystem/v3-ActSite", "LT", "left thigh")
                    } else {
                        cc("http://terminology.hl7.org/CodeSystem/v3-ActSite", "LA", "left arm")
                    };
                }
            }
        }
        self.put(r);
    }

    fn coded_observation(&mut self, enc: &Enc, category: &str, code: &str, display: &str, value: (&str, &str, &str)) -> String {
        let id = self.id("obs");
        self.put(json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": [cc(OBS_CATEGORY, category, if category == "social-history" { "Social History" } else { "Survey" })],
            "code": cc(LOINC, code, display),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "effectiveDateTime": enc.at(8),
            "performer": [reference("Practitioner", &practitioner_id(enc.clinician))],
            "valueCodeableConcept": cc(value.0, value.1, value.2)
        }));
        id
    }

    /// The Hunger Vital Sign: two questions and the risk they add up to, as a QuestionnaireResponse and as
    /// Observations derived from it.
    fn hunger_screen(&mut self, enc: &Enc, last: bool) {
        let positive = self.food_insecure && last;
        let (a1, a2) =
            if positive { (("LA28397-0", "Often true"), ("LA6729-3", "Sometimes true")) } else { (("LA28398-8", "Never true"), ("LA28398-8", "Never true")) };
        let risk = if positive { ("LA19952-3", "At risk") } else { ("LA19983-8", "No risk") };
        let qr = self.id("qr");
        let q1 = "Within the past 12 months we worried whether our food would run out before we got money to buy more";
        let q2 = "Within the past 12 months the food we bought just didn't last and we didn't have money to get more";
        self.put(json!({
            "resourceType": "QuestionnaireResponse", "id": qr, "status": "completed",
            "questionnaire": "http://loinc.org/q/88121-9",
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "authored": enc.at(7),
            "author": reference("Practitioner", &practitioner_id(enc.clinician)),
            "source": self.patient_ref(),
            "item": [
                {"linkId": "/88122-7", "text": q1, "answer": [{"valueCoding": coding(LOINC, a1.0, a1.1)}]},
                {"linkId": "/88123-5", "text": q2, "answer": [{"valueCoding": coding(LOINC, a2.0, a2.1)}]},
                {"linkId": "/88124-3", "text": "Food insecurity risk", "answer": [{"valueCoding": coding(LOINC, risk.0, risk.1)}]}
            ]
        }));
        let category =
            json!([cc(OBS_CATEGORY, "survey", "Survey"), cc(OBS_CATEGORY, "social-history", "Social History"), cc(US_CORE_CATEGORY, "sdoh", "SDOH")]);
        let mut members = Vec::new();
        for (code, display, (vcode, vdisplay)) in [("88122-7", q1, a1), ("88123-5", q2, a2), ("88124-3", "Food insecurity risk [HVS]", risk)] {
            let id = self.id("obs");
            self.put(json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "category": category,
                "code": cc(LOINC, code, display),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "effectiveDateTime": enc.at(7),
                "performer": [reference("Patient", &self.pid)],
                "valueCodeableConcept": cc(LOINC, vcode, vdisplay),
                "derivedFrom": [reference("QuestionnaireResponse", &qr)]
            }));
            members.push(reference("Observation", &id));
        }
        let id = self.id("obs");
        self.put(json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "category": category,
            "code": cc(LOINC, "88121-9", "Hunger Vital Sign [HVS]"),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "effectiveDateTime": enc.at(7),
            "performer": [reference("Patient", &self.pid)],
            "hasMember": members,
            "derivedFrom": [reference("QuestionnaireResponse", &qr)]
        }));
        if positive {
            let day = enc.start.date();
            self.problems.push(Problem { cond: condition("733423003"), onset: day, id: None, rx: None });
            self.record_problems(enc, day);
            let cid = self.problems.last().and_then(|p| p.id.clone()).unwrap_or_default();
            self.referral(enc, "308440001", "Referral to social worker (procedure)", "sdoh", "SDOH", Some(&cid));
        }
    }

    /// A referral or order: a ServiceRequest.
    fn referral(&mut self, enc: &Enc, code: &str, display: &str, category: &str, category_display: &str, reason: Option<&str>) -> String {
        let id = self.id("order");
        let category = if category == "sdoh" { cc(US_CORE_CATEGORY, "sdoh", category_display) } else { cc(SNOMED, category, category_display) };
        let mut r = json!({
            "resourceType": "ServiceRequest", "id": id, "status": "active", "intent": "order",
            "identifier": [{"system": ORDER_SYSTEM, "value": format!("ORD{}", 700_000 + self.counter * 13 + self.n * 10_009)}],
            "category": [category],
            "code": cc(SNOMED, code, display),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "occurrenceDateTime": date_str(enc.start.date() + Duration::days(14)),
            "authoredOn": enc.at(30),
            "requester": named_reference("Practitioner", &practitioner_id(enc.clinician), &clinician_name(enc.clinician))
        });
        if enc.start.date() + Duration::days(14) < self.today {
            r["status"] = json!("completed");
        }
        if let Some(reason) = reason {
            r["reasonReference"] = json!([reference("Condition", reason)]);
        }
        self.put(r);
        id
    }

    fn lab_offset(&mut self, code: &'static str) -> f64 {
        if let Some((_, z)) = self.lab_offsets.iter().find(|(c, _)| *c == code) {
            return *z;
        }
        let z = self.rng.normal(0.0, 0.6);
        self.lab_offsets.push((code, z));
        z
    }

    /// A laboratory panel: the order, the specimen, the results with reference ranges for the patient's sex,
    /// and the report. `white_cells` overrides the leukocyte mean (infection).
    fn panel(&mut self, enc: &Enc, panel: &Panel, white_cells: Option<f64>) {
        let day = enc.start.date();
        let order = self.id("order");
        let specimen = self.id("specimen");
        let drawn = enc.at(20);
        let accession = format!("{}-{:06}", day.year() % 100, (self.counter * 37 + self.n * 1_009) % 1_000_000);
        self.put(json!({
            "resourceType": "ServiceRequest", "id": order, "status": "completed", "intent": "order",
            "identifier": [{"system": ORDER_SYSTEM, "value": format!("LAB{}", 800_000 + self.counter * 11 + self.n * 10_037)}],
            "category": [cc(SNOMED, "108252007", "Laboratory procedure")],
            "code": cc(LOINC, panel.code, panel.display),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "occurrenceDateTime": drawn,
            "authoredOn": enc.at(15),
            "requester": named_reference("Practitioner", &practitioner_id(enc.clinician), &clinician_name(enc.clinician)),
            "specimen": [reference("Specimen", &specimen)]
        }));
        let (type_code, type_display) = if panel.code == BLOOD_COUNT.code || panel.code == HBA1C.code {
            ("119297000", "Blood specimen (specimen)")
        } else {
            ("119364003", "Serum specimen (specimen)")
        };
        self.put(json!({
            "resourceType": "Specimen", "id": specimen, "status": "available",
            "accessionIdentifier": {"system": ACCESSION_SYSTEM, "value": accession},
            "type": cc(SNOMED, type_code, type_display),
            "subject": self.patient_ref(),
            "receivedTime": enc.at(40),
            "request": [reference("ServiceRequest", &order)],
            "collection": {"collectedDateTime": drawn, "bodySite": cc(SNOMED, "368208006", "Left upper arm structure (body structure)")}
        }));
        let diabetic = self.active_at("44054006", day);
        let mut results = Vec::new();
        let mut lines = Vec::new();
        let reported = enc.start + Duration::hours(if enc.end - enc.start > Duration::hours(12) { 6 } else { 26 });
        let report_time = datetime_str(if reported.date() >= self.today { enc.end } else { reported });
        for lab in panel.tests {
            let mut mean = lab.mean;
            let mut sd = lab.sd;
            if !self.male {
                if lab.code == HEMOGLOBIN.code {
                    mean -= 1.5;
                }
                if lab.code == CREATININE.code {
                    mean *= 0.8;
                }
            }
            // Anaemia on the problem list shows in the blood count: mild to moderate, below the range.
            if lab.code == HEMOGLOBIN.code && self.active_at("271737000", day) {
                mean = if self.male { 11.8 } else { 10.4 };
            }
            if diabetic && lab.code == A1C.code {
                mean = 7.6;
                sd = 0.7;
            }
            if diabetic && lab.code == GLUCOSE.code {
                mean = 150.0;
                sd = 28.0;
            }
            if self.active_at("55822004", day) && (lab.code == LDL.code || lab.code == CHOLESTEROL.code) {
                mean *= 1.25;
            }
            if let (Some(wbc), true) = (white_cells, lab.code == LEUKOCYTES.code) {
                mean = wbc;
            }
            let z = self.lab_offset(lab.code);
            let value = round((mean + sd * (z + self.rng.normal(0.0, 0.5))).max(lab.mean * 0.3), lab.decimals);
            let (low, high) = if self.male { lab.male } else { lab.female };
            let (flag, flag_display) = if value > high {
                ("H", "High")
            } else if value < low {
                ("L", "Low")
            } else {
                ("N", "Normal")
            };
            let id = self.id("obs");
            let q = |v: f64| json!({"value": v, "unit": lab.unit, "system": UCUM, "code": lab.unit});
            let mut range = json!({"high": q(high), "text": format!("{low}–{high} {}", lab.unit)});
            if low > 0.0 {
                range["low"] = q(low);
            } else {
                range["text"] = json!(format!("<{high} {}", lab.unit));
            }
            self.put(json!({
                "resourceType": "Observation", "id": id, "status": "final",
                "category": [{"coding": [coding(OBS_CATEGORY, "laboratory", "Laboratory")], "text": "Laboratory"}],
                "code": cc(LOINC, lab.code, lab.display),
                "subject": self.patient_ref(),
                "encounter": reference("Encounter", &enc.id),
                "basedOn": [reference("ServiceRequest", &order)],
                "specimen": reference("Specimen", &specimen),
                "effectiveDateTime": drawn,
                "issued": format!("{}.000Z", report_time.trim_end_matches('Z')),
                "performer": [named_reference("Organization", PROVIDERS[0].0, PROVIDERS[0].1)],
                "valueQuantity": q(value),
                "interpretation": [cc(INTERPRETATION, flag, flag_display)],
                "referenceRange": [range]
            }));
            results.push(reference("Observation", &id));
            lines.push(format!("{}: {value} {} ({flag_display})", lab.display, lab.unit));
        }
        let id = self.id("report");
        let text = lines.join("\n");
        self.put(json!({
            "resourceType": "DiagnosticReport", "id": id, "status": "final",
            "identifier": [{"system": ACCESSION_SYSTEM, "value": accession}],
            "basedOn": [reference("ServiceRequest", &order)],
            "category": [cc("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory")],
            "code": cc(LOINC, panel.code, panel.display),
            "subject": self.patient_ref(),
            "encounter": reference("Encounter", &enc.id),
            "effectiveDateTime": drawn,
            "issued": format!("{}.000Z", report_time.trim_end_matches('Z')),
            "performer": [named_reference("Organization", PROVIDERS[0].0, PROVIDERS[0].1)],
            "resultsInterpreter": [reference("Practitioner", &practitioner_id(enc.clinician))],
            "specimen": [reference("Specimen", &specimen)],
            "result": results,
            "conclusion": text
        }));
    }

    /// The visit's note as a DocumentReference with its Binary: a progress note in plain text, or a
    /// discharge summary as a small PDF after a hospital stay.
    fn note(&mut self, enc: &Enc, kind: Kind, lines: &[String]) {
        let inpatient = matches!(kind, Kind::Inpatient(_));
        let (code, display) = match kind {
            Kind::Inpatient(_) => ("18842-5", "Discharge summary"),
            Kind::Emergency(_) => ("34111-5", "Emergency department Note"),
            _ => ("11506-3", "Progress note"),
        };
        let mut text = vec![
            format!("{display} — {} {}", self.given, self.family),
            format!("Date: {}  Clinician: {}", date_str(enc.start.date()), clinician_name(enc.clinician)),
        ];
        text.extend(lines.iter().cloned());
        let active: Vec<String> =
            self.problems.iter().filter(|p| p.id.is_some()).map(|p| CONDITIONS[p.cond].1.split(" (").next().unwrap_or_default().to_string()).collect();
        if !active.is_empty() {
            text.push(format!("Problem list: {}.", active.join("; ")));
        }
        text.push(if inpatient {
            "Discharged home in stable condition; follow up with primary care within 7 days.".into()
        } else {
            "Plan: continue current medicines; return as needed.".into()
        });
        let (content_type, bytes) = if inpatient { ("application/pdf", pdf(&text)) } else { ("text/plain", text.join("\n").into_bytes()) };
        let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let binary = self.id("binary");
        self.put(
            json!({"resourceType": "Binary", "id": binary, "contentType": content_type, "securityContext": reference("Patient", &self.pid), "data": data}),
        );
        let id = self.id("doc");
        self.put(json!({
            "resourceType": "DocumentReference", "id": id, "status": "current", "docStatus": "final",
            "identifier": [{"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", pseudo_uuid(&id))}],
            "type": cc(LOINC, code, display),
            "category": [cc(US_CORE_DOC_CATEGORY, "clinical-note", "Clinical Note")],
            "subject": self.patient_ref(),
            "date": format!("{}.000Z", datetime_str(enc.end).trim_end_matches('Z')),
            "author": [named_reference("Practitioner", &practitioner_id(enc.clinician), &clinician_name(enc.clinician))],
            "custodian": named_reference("Organization", PROVIDERS[enc.org].0, PROVIDERS[enc.org].1),
            "content": [{"attachment": {"contentType": content_type, "language": "en-US", "url": format!("Binary/{binary}"), "size": bytes.len(), "title": display, "creation": datetime_str(enc.end)}, "format": coding("http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode", "urn:ihe:iti:xds:2017:mimeTypeSufficient", "mimeType Sufficient")}],
            "context": {"encounter": [reference("Encounter", &enc.id)], "period": {"start": datetime_str(enc.start), "end": datetime_str(enc.end)}}
        }));
    }

    fn care_plans(&mut self, visits: &[(Date, Kind)]) {
        let Some(&(first, _)) = visits.first() else { return };
        let mut goals = Vec::new();
        let mut addresses = Vec::new();
        let mut activities = Vec::new();
        let targets = [
            ("38341003", "Blood pressure below 140/90 mmHg", "Home blood pressure readings; low-salt diet; lisinopril daily."),
            ("44054006", "Hemoglobin A1c below 7.0%", "Metformin with meals; A1c every three months; annual eye and foot examination."),
            ("55822004", "LDL cholesterol below 100 mg/dL", "Atorvastatin at bedtime; lipid panel yearly."),
            ("195967001", "No night-time asthma symptoms", "Inhaled fluticasone twice daily; asthma action plan reviewed."),
            ("162864005", "Lose 5% of body weight in a year", "Walk 30 minutes on five days a week; dietitian referral."),
        ];
        for (code, goal, activity) in targets {
            let Some(p) = self.problems.iter().find(|p| CONDITIONS[p.cond].0 == code && p.id.is_some()) else { continue };
            let (cid, onset) = (p.id.clone().unwrap_or_default(), p.onset.max(first));
            let id = self.id("goal");
            self.put(json!({
                "resourceType": "Goal", "id": id, "lifecycleStatus": "active",
                "achievementStatus": cc("http://terminology.hl7.org/CodeSystem/goal-achievement", "in-progress", "In Progress"),
                "description": {"text": goal},
                "subject": self.patient_ref(),
                "startDate": date_str(onset),
                "target": [{"dueDate": date_str(self.today + Duration::days(180))}],
                "expressedBy": reference("Practitioner", &practitioner_id(self.gp)),
                "addresses": [reference("Condition", &cid)]
            }));
            goals.push(reference("Goal", &id));
            addresses.push(reference("Condition", &cid));
            activities.push(activity);
        }
        if goals.is_empty() {
            return;
        }
        let id = self.id("careplan");
        let items: String = activities.iter().map(|a| format!("<li>{a}</li>")).collect();
        self.put(json!({
            "resourceType": "CarePlan", "id": id, "status": "active", "intent": "plan",
            "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Care plan for long-term conditions</p><ul>{items}</ul></div>")},
            "category": [cc(CARE_PLAN_CATEGORY, "assess-plan", "Assessment and Plan of Treatment")],
            "title": "Long-term conditions",
            "subject": self.patient_ref(),
            "period": {"start": date_str(first)},
            "author": reference("Practitioner", &practitioner_id(self.gp)),
            "addresses": addresses,
            "goal": goals,
            "activity": activities.iter().map(|a| json!({"detail": {"status": "in-progress", "description": a}})).collect::<Vec<_>>()
        }));
    }

    fn care_team(&mut self, parent: Option<&str>) {
        let id = self.id("careteam");
        let mut participants = vec![
            json!({"role": [cc(SNOMED, "116154003", "Patient (person)")], "member": self.patient_ref()}),
            json!({"role": [cc(SNOMED, "446050000", "Primary care physician (occupation)")], "member": named_reference("Practitioner", &practitioner_id(self.gp), &clinician_name(self.gp)), "onBehalfOf": reference("Organization", PROVIDERS[self.org].0)}),
        ];
        if self.has("49436004") || self.has("399211009") {
            participants.push(json!({"role": [cc(SNOMED, "17561000", "Cardiologist (occupation)")], "member": named_reference("Practitioner", &practitioner_id(CARDIOLOGIST), &clinician_name(CARDIOLOGIST))}));
        }
        if self.has("72892002") {
            participants.push(json!({"role": [cc(SNOMED, "309367003", "Obstetrician (occupation)")], "member": named_reference("Practitioner", &practitioner_id(OBSTETRICIAN), &clinician_name(OBSTETRICIAN))}));
        }
        if let Some(parent) = parent {
            participants.push(json!({"role": [cc(SNOMED, "133932002", "Caregiver (person)")], "member": reference("RelatedPerson", parent)}));
        }
        self.put(json!({
            "resourceType": "CareTeam", "id": id, "status": "active",
            "name": "Primary care team",
            "subject": self.patient_ref(),
            "participant": participants,
            "managingOrganization": [reference("Organization", PROVIDERS[self.org].0)]
        }));
    }

    /// An implanted cardiac device for some older patients with heart disease.
    fn device(&mut self) {
        let cardiac = self.problems.iter().find(|p| matches!(CONDITIONS[p.cond].0, "49436004" | "399211009")).map(|p| (CONDITIONS[p.cond].0, p.onset));
        let Some((code, onset)) = cardiac else { return };
        if self.age_at(self.today) < 60.0 {
            return;
        }
        let (dcode, ddisplay) = if code == "49436004" {
            ("14106009", "Cardiac pacemaker, device (physical object)")
        } else {
            ("72506001", "Implantable defibrillator, device (physical object)")
        };
        let implanted = onset + Duration::days(60);
        let made = implanted - Duration::days(200);
        let expires = made + Duration::days(3_650);
        let gtin = format!("0{}", 8_717_648_200_000u64 + self.n as u64 * 97);
        let lot = format!("{}{:04}", ["PM", "ICD"][usize::from(code != "49436004")], self.n * 13 % 10_000);
        let serial = format!("{:010}", 1_000_000_000 + self.n as u64 * 7_777_777 % 9_000_000_000);
        let yymmdd = |d: Date| format!("{:02}{:02}{:02}", d.year() % 100, d.month() as u8, d.day());
        let id = self.id("device");
        self.put(json!({
            "resourceType": "Device", "id": id, "status": "active",
            "udiCarrier": [{"deviceIdentifier": gtin, "issuer": UDI_ISSUER, "carrierHRF": format!("(01){gtin}(11){}(17){}(10){lot}(21){serial}", yymmdd(made), yymmdd(expires))}],
            "distinctIdentifier": serial,
            "manufactureDate": date_str(made),
            "expirationDate": date_str(expires),
            "lotNumber": lot,
            "serialNumber": serial,
            "type": cc(SNOMED, dcode, ddisplay),
            "patient": self.patient_ref()
        }));
    }

    fn provenance(&mut self, enc: &Enc) {
        let targets = std::mem::take(&mut self.recorded);
        let id = self.id("provenance");
        self.b.put(json!({
            "resourceType": "Provenance", "id": id,
            "target": targets,
            "recorded": format!("{}.000Z", datetime_str(enc.end).trim_end_matches('Z')),
            "agent": [{
                "type": cc(PROVENANCE_AGENT, "author", "Author"),
                "who": named_reference("Practitioner", &practitioner_id(enc.clinician), &clinician_name(enc.clinician)),
                "onBehalfOf": named_reference("Organization", PROVIDERS[enc.org].0, PROVIDERS[enc.org].1)
            }, {
                "type": cc("http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type", "transmitter", "Transmitter"),
                "who": named_reference("Organization", PROVIDERS[enc.org].0, PROVIDERS[enc.org].1)
            }]
        }));
    }

    /// Provenance for what no visit holds: the demographics, coverage, allergies, plans, team and devices.
    fn provenance_for_rest(&mut self) {
        if self.recorded.is_empty() {
            return;
        }
        let when = self.last_visit.unwrap_or_else(|| PrimitiveDateTime::new(self.today - Duration::days(1), Time::MIDNIGHT));
        let enc = Enc { id: String::new(), start: when, end: when, clinician: self.gp, location: CLINICIANS[self.gp].location, org: self.org };
        self.provenance(&enc);
    }
}

pub(crate) fn parse_day(s: &str) -> Option<Date> {
    let mut parts = s.get(..10)?.split('-').map(|p| p.parse::<i32>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    Date::from_calendar_date(y, time::Month::try_from(m as u8).ok()?, d as u8).ok()
}

/// A stable UUID-shaped identifier derived from an id (FNV-1a), for document identifiers.
fn pseudo_uuid(s: &str) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in s.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    let hex = format!("{h:032x}");
    format!("{}-{}-4{}-a{}-{}", &hex[..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32])
}

/// A one-page PDF holding the lines of text (Helvetica, Latin-1), with a correct cross-reference table.
fn pdf(lines: &[String]) -> Vec<u8> {
    let escape = |s: &str| -> Vec<u8> {
        let mut out = Vec::new();
        for c in s.chars() {
            match c {
                '(' | ')' | '\\' => {
                    out.push(b'\\');
                    out.push(c as u8);
                }
                '—' | '–' => out.push(b'-'),
                c if (c as u32) < 256 => out.push(c as u32 as u8),
                _ => out.push(b'?'),
            }
        }
        out
    };
    let mut stream = b"BT /F1 11 Tf 14 TL 56 780 Td".to_vec();
    for line in lines {
        stream.extend_from_slice(b" (");
        stream.extend(escape(line));
        stream.extend_from_slice(b") Tj T*");
    }
    stream.extend_from_slice(b" ET");
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>".to_vec(),
        [format!("<< /Length {} >>\nstream\n", stream.len()).into_bytes(), stream, b"\nendstream".to_vec()].concat(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n", i + 1).into_bytes());
        out.extend(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).into_bytes());
    for o in offsets {
        out.extend(format!("{o:010} 00000 n \n").into_bytes());
    }
    out.extend(format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).into_bytes());
    out
}
