//! Code systems and the clinical vocabularies the generator draws from.

pub const SNOMED: &str = "http://snomed.info/sct";
pub const LOINC: &str = "http://loinc.org";
pub const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
pub const CVX: &str = "http://hl7.org/fhir/sid/cvx";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
pub const CONDITION_VER: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
pub const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
pub const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
pub const ALLERGY_VER: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";
pub const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

/// (SNOMED code, display, chronic, associated medication index in MEDICATIONS)
pub const CONDITIONS: &[(&str, &str, bool, Option<usize>)] = &[
    ("38341003", "Hypertensive disorder, systemic arterial (disorder)", true, Some(0)),
    ("44054006", "Diabetes mellitus type 2 (disorder)", true, Some(1)),
    ("195967001", "Asthma (disorder)", true, Some(2)),
    ("55822004", "Hyperlipidemia (disorder)", true, Some(3)),
    ("40055000", "Chronic sinusitis (disorder)", true, None),
    ("35489007", "Depressive disorder (disorder)", true, Some(4)),
    ("13645005", "Chronic obstructive pulmonary disease (disorder)", true, Some(2)),
    ("49436004", "Atrial fibrillation (disorder)", true, Some(5)),
    ("10509002", "Acute bronchitis (disorder)", false, Some(6)),
    ("444814009", "Viral sinusitis (disorder)", false, None),
    ("195662009", "Acute viral pharyngitis (disorder)", false, None),
    ("43878008", "Streptococcal sore throat (disorder)", false, Some(7)),
    ("68566005", "Urinary tract infectious disease (disorder)", false, Some(8)),
    ("271737000", "Anemia (disorder)", true, None),
    ("399211009", "History of myocardial infarction (situation)", true, Some(9)),
    ("162864005", "Body mass index 30+ - obesity (finding)", true, None),
];

/// (RxNorm code, display, dosage text)
pub const MEDICATIONS: &[(&str, &str, &str)] = &[
    ("314076", "lisinopril 10 MG Oral Tablet", "1 tablet by mouth once daily"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet", "1 tablet by mouth twice daily with meals"),
    ("895994", "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler", "2 puffs inhaled twice daily"),
    ("259255", "atorvastatin 80 MG Oral Tablet", "1 tablet by mouth at bedtime"),
    ("312938", "sertraline 100 MG Oral Tablet", "1 tablet by mouth once daily"),
    ("855332", "warfarin sodium 5 MG Oral Tablet", "1 tablet by mouth once daily; adjust to INR"),
    ("313782", "acetaminophen 325 MG Oral Tablet", "2 tablets by mouth every 6 hours as needed"),
    ("834061", "penicillin V potassium 500 MG Oral Tablet", "1 tablet by mouth every 6 hours for 10 days"),
    ("311989", "nitrofurantoin 100 MG Oral Capsule", "1 capsule by mouth twice daily for 5 days"),
    ("243670", "aspirin 81 MG Oral Tablet", "1 tablet by mouth once daily"),
];

/// (SNOMED code, display, category, criticality, reaction SNOMED code, reaction display)
pub const ALLERGIES: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("91936005", "Allergy to penicillin", "medication", "high", "247472004", "Wheal (finding)"),
    ("300913006", "Shellfish allergy", "food", "high", "39579001", "Anaphylaxis (disorder)"),
    ("91935009", "Allergy to peanuts", "food", "high", "39579001", "Anaphylaxis (disorder)"),
    ("418689008", "Allergy to grass pollen", "environment", "low", "21626009", "Cutaneous hypersensitivity (finding)"),
    ("294505008", "Allergy to sulfonamide", "medication", "low", "271807003", "Eruption of skin (disorder)"),
    ("232347008", "Dander (animal) allergy", "environment", "low", "76067001", "Sneezing (finding)"),
];

/// (CVX code, display)
pub const VACCINES: &[(&str, &str)] = &[
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("113", "Td (adult) preservative free"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("08", "Hep B, adolescent or pediatric"),
    ("208", "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL dose"),
    ("121", "zoster vaccine, live"),
];

/// A laboratory test: (LOINC, display, unit, low, high, mean, sd, decimals)
pub type Lab = (&'static str, &'static str, &'static str, f64, f64, f64, f64, u32);
pub const LABS: &[Lab] = &[
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70.0, 99.0, 92.0, 18.0, 0),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 5.7, 0.9, 1),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 1.0, 0.25, 2),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 125.0, 200.0, 190.0, 35.0, 0),
    ("2571-8", "Triglycerides [Mass/volume] in Serum or Plasma", "mg/dL", 0.0, 150.0, 130.0, 45.0, 0),
    ("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 40.0, 100.0, 52.0, 12.0, 0),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 14.0, 1.5, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 7.2, 2.0, 1),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 4.3, 0.4, 1),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136.0, 145.0, 140.0, 2.5, 0),
];

pub const GIVEN_MALE: &[&str] = &["James", "Robert", "Michael", "David", "William", "Joseph", "Thomas", "Carlos", "Hiroshi", "Ahmed", "Liam", "Noah", "Mateo", "Oliver", "Samuel"];
pub const GIVEN_FEMALE: &[&str] = &["Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Maria", "Sofia", "Aisha", "Mei", "Olivia", "Emma", "Amelia", "Chloé", "Zoë", "Hannah"];
pub const FAMILY: &[&str] = &["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Nguyen", "Kim", "Okafor", "Müller", "O'Brien", "Kowalski", "Haddad", "Schmidt", "Rossi", "Yamamoto"];
pub const CITIES: &[(&str, &str, &str)] = &[
    ("Boston", "MA", "02118"), ("Worcester", "MA", "01608"), ("Springfield", "MA", "01103"), ("Cambridge", "MA", "02139"),
    ("Lowell", "MA", "01852"), ("Providence", "RI", "02903"), ("Hartford", "CT", "06103"), ("Portland", "ME", "04101"),
];
pub const STREETS: &[&str] = &["Maple Street", "Oak Avenue", "Washington Street", "Elm Road", "Harbor Way", "Chestnut Lane", "Beacon Street", "Pine Court"];
