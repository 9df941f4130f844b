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
pub const CONDITION_CATEGORY_US_CORE: &str = "http://hl7.org/fhir/us/core/CodeSystem/condition-category";
pub const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
pub const ALLERGY_VER: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const INTERPRETATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";
pub const NPI: &str = "http://hl7.org/fhir/sid/us-npi";
pub const ENCOUNTER_ID_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5.99999.2";
pub const MEMBER_ID_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5.99999.3";
pub const ACCESSION_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5.99999.4";
pub const ORDER_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5.99999.5";
pub const UDI_ISSUER: &str = "http://hl7.org/fhir/NamingSystem/gs1-di";
pub const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
pub const US_CORE_CATEGORY: &str = "http://hl7.org/fhir/us/core/CodeSystem/us-core-category";
pub const US_CORE_DOC_CATEGORY: &str = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category";
pub const PROVENANCE_AGENT: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
pub const ROLE_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";
pub const DISCHARGE_DISPOSITION: &str = "http://terminology.hl7.org/CodeSystem/discharge-disposition";
pub const ADMIT_SOURCE: &str = "http://terminology.hl7.org/CodeSystem/admit-source";
pub const PAYER_TYPE: &str = "https://nahdo.org/sopt";
pub const SUBSCRIBER_RELATIONSHIP: &str = "http://terminology.hl7.org/CodeSystem/subscriber-relationship";
pub const COVERAGE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/coverage-class";
pub const CARE_PLAN_CATEGORY: &str = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category";
pub const ACT_PHARMACY_SUPPLY: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const RACE_URL: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
pub const ETHNICITY_URL: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";
pub const BIRTH_SEX_URL: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex";
pub const CDC_RACE: &str = "urn:oid:2.16.840.1.113883.6.238";

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
    ("65363002", "Otitis media (disorder)", false, Some(10)),
    ("44465007", "Sprain of ankle (disorder)", false, Some(11)),
    ("233604007", "Pneumonia (disorder)", false, None),
    ("733423003", "Food insecurity (finding)", true, None),
    ("72892002", "Normal pregnancy (finding)", true, None),
];

/// The index in [`CONDITIONS`] of a SNOMED code.
pub fn condition(code: &str) -> usize {
    CONDITIONS.iter().position(|c| c.0 == code).unwrap_or_else(|| panic!("unknown condition {code}"))
}

/// (RxNorm code, display, dosage text): adult products and doses. Children under 12 get their own
/// ([`CHILD_MEDICATIONS`]), dosed by weight.
pub const MEDICATIONS: &[(&str, &str, &str)] = &[
    ("314076", "lisinopril 10 MG Oral Tablet", "1 tablet by mouth once daily"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet", "1 tablet by mouth twice daily with meals"),
    ("895994", "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler", "2 puffs inhaled twice daily"),
    ("259255", "atorvastatin 80 MG Oral Tablet", "1 tablet by mouth at bedtime"),
    ("312938", "sertraline 100 MG Oral Tablet", "1 tablet by mouth once daily"),
    ("855332", "warfarin sodium 5 MG Oral Tablet", "1 tablet by mouth once daily; adjust to INR"),
    ("313782", "acetaminophen 325 MG Oral Tablet", "2 tablets by mouth every 6 hours as needed"),
    ("834102", "penicillin V potassium 500 MG Oral Tablet", "1 tablet by mouth twice daily for 10 days"),
    ("311995", "nitrofurantoin, macrocrystals 50 MG Oral Capsule", "1 capsule by mouth four times daily for 7 days"),
    ("243670", "aspirin 81 MG Oral Tablet", "1 tablet by mouth once daily"),
    ("308182", "amoxicillin 250 MG Oral Capsule", "2 capsules by mouth three times daily for 10 days"),
    ("197806", "ibuprofen 600 MG Oral Tablet", "1 tablet by mouth every 8 hours as needed for pain"),
];

/// What a child from 2 to 11 years old is given instead of [`MEDICATIONS`]`[i]`: (adult index, RxNorm
/// code, display, mg per unit, mg per kg per dose, most units per dose, dosage text with `{n}` for the
/// units per dose). Under 2, a sick visit ends without a prescription (supportive care; watchful waiting
/// for otitis media).
pub const CHILD_MEDICATIONS: &[(usize, &str, &str, f64, f64, u32, &str)] = &[
    (6, "282464", "acetaminophen 160 MG Oral Tablet", 160.0, 15.0, 3, "{n} tablet(s) by mouth every 6 hours as needed; at most 4 doses a day"),
    (7, "834061", "penicillin V potassium 250 MG Oral Tablet", 250.0, 12.5, 2, "{n} tablet(s) by mouth twice daily for 10 days"),
    (10, "308182", "amoxicillin 250 MG Oral Capsule", 250.0, 40.0, 4, "{n} capsule(s) by mouth twice daily for 10 days"),
    (11, "198405", "ibuprofen 100 MG Oral Tablet", 100.0, 10.0, 4, "{n} tablet(s) by mouth every 8 hours as needed for pain"),
];

/// Medicines given in hospital, as shared `Medication` resources: (id, RxNorm code, display, dosage text)
pub const HOSPITAL_MEDICATIONS: &[(&str, &str, &str, &str)] = &[
    ("kp-med-ceftriaxone", "1665021", "ceftriaxone 1000 MG Injection", "1 g intravenously every 24 hours"),
    ("kp-med-azithromycin", "141962", "azithromycin 250 MG Oral Capsule", "500 mg by mouth on day 1, then 250 mg daily"),
    ("kp-med-enoxaparin", "854235", "enoxaparin sodium 40 MG/0.4 ML Prefilled Syringe", "40 mg subcutaneously once daily"),
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

/// Routine doses by age (days): (age, CVX code, display). Doses due before a patient's records begin are
/// taken as given elsewhere.
pub const IMMUNIZATION_SCHEDULE: &[(i64, &str, &str)] = &[
    (0, "08", "Hep B, adolescent or pediatric"),
    (61, "20", "DTaP"),
    (61, "10", "IPV"),
    (61, "49", "Hib (PRP-OMP)"),
    (61, "133", "Pneumococcal conjugate PCV 13"),
    (61, "119", "rotavirus, monovalent"),
    (122, "20", "DTaP"),
    (122, "10", "IPV"),
    (122, "49", "Hib (PRP-OMP)"),
    (122, "133", "Pneumococcal conjugate PCV 13"),
    (122, "119", "rotavirus, monovalent"),
    (183, "20", "DTaP"),
    (183, "133", "Pneumococcal conjugate PCV 13"),
    (183, "08", "Hep B, adolescent or pediatric"),
    (365, "03", "MMR"),
    (365, "21", "varicella"),
    (365, "83", "Hep A, ped/adol, 2 dose"),
    (548, "20", "DTaP"),
    (548, "83", "Hep A, ped/adol, 2 dose"),
    (1461, "20", "DTaP"),
    (1461, "10", "IPV"),
    (1461, "03", "MMR"),
    (1461, "21", "varicella"),
    (4018, "115", "Tdap"),
    (4018, "165", "HPV9"),
    (4018, "114", "meningococcal MCV4P"),
    (9131, "113", "Td (adult) preservative free"),
    (12784, "113", "Td (adult) preservative free"),
    (16436, "113", "Td (adult) preservative free"),
    (18262, "187", "zoster recombinant"),
    (18323, "187", "zoster recombinant"),
    (20089, "113", "Td (adult) preservative free"),
    (23741, "216", "Pneumococcal conjugate PCV20, polysaccharide CRM197 conjugate, adjuvant, preservative free"),
    (23742, "113", "Td (adult) preservative free"),
    (27394, "113", "Td (adult) preservative free"),
];
pub const INFLUENZA: (&str, &str) = ("140", "Influenza, seasonal, injectable, preservative free");

/// A laboratory test: LOINC, display, UCUM unit, reference range (low, high) for males and for females,
/// population mean, standard deviation, decimals.
pub struct Lab {
    pub code: &'static str,
    pub display: &'static str,
    pub unit: &'static str,
    pub male: (f64, f64),
    pub female: (f64, f64),
    pub mean: f64,
    pub sd: f64,
    pub decimals: u32,
}

const fn lab(code: &'static str, display: &'static str, unit: &'static str, range: (f64, f64), mean: f64, sd: f64, decimals: u32) -> Lab {
    Lab { code, display, unit, male: range, female: range, mean, sd, decimals }
}

pub const GLUCOSE: Lab = lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", (70.0, 99.0), 91.0, 9.0, 0);
pub const CREATININE: Lab = Lab {
    code: "2160-0",
    display: "Creatinine [Mass/volume] in Serum or Plasma",
    unit: "mg/dL",
    male: (0.74, 1.35),
    female: (0.59, 1.04),
    mean: 0.9,
    sd: 0.15,
    decimals: 2,
};
pub const SODIUM: Lab = lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", (135.0, 145.0), 140.0, 2.0, 0);
pub const POTASSIUM: Lab = lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", (3.5, 5.1), 4.2, 0.3, 1);
pub const CHOLESTEROL: Lab = lab("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", (0.0, 200.0), 185.0, 28.0, 0);
pub const TRIGLYCERIDES: Lab = lab("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", (0.0, 150.0), 120.0, 35.0, 0);
pub const HDL: Lab = lab("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", (40.0, 100.0), 52.0, 10.0, 0);
pub const LDL: Lab = lab("18262-6", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay", "mg/dL", (0.0, 100.0), 105.0, 25.0, 0);
/// The mean is for men; women's is 1.5 g/dL lower.
pub const HEMOGLOBIN: Lab = Lab {
    code: "718-7",
    display: "Hemoglobin [Mass/volume] in Blood",
    unit: "g/dL",
    male: (13.5, 17.5),
    female: (12.0, 15.5),
    mean: 15.0,
    sd: 0.8,
    decimals: 1,
};
pub const LEUKOCYTES: Lab = lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", (4.5, 11.0), 7.0, 1.4, 1);
pub const PLATELETS: Lab = lab("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", (150.0, 400.0), 260.0, 45.0, 0);
pub const A1C: Lab = lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", (4.0, 5.6), 5.3, 0.25, 1);

/// A laboratory panel: LOINC, display, and its tests.
pub struct Panel {
    pub code: &'static str,
    pub display: &'static str,
    pub tests: &'static [&'static Lab],
}

pub const BASIC_METABOLIC: Panel = Panel { code: "51990-0", display: "Basic metabolic panel - Blood", tests: &[&GLUCOSE, &CREATININE, &SODIUM, &POTASSIUM] };
pub const LIPID: Panel =
    Panel { code: "57698-3", display: "Lipid panel with direct LDL - Serum or Plasma", tests: &[&CHOLESTEROL, &TRIGLYCERIDES, &HDL, &LDL] };
pub const BLOOD_COUNT: Panel = Panel { code: "58410-2", display: "CBC panel - Blood by Automated count", tests: &[&HEMOGLOBIN, &LEUKOCYTES, &PLATELETS] };
pub const HBA1C: Panel = Panel { code: "4548-4", display: "Hemoglobin A1c/Hemoglobin.total in Blood", tests: &[&A1C] };

pub const GIVEN_MALE: &[&str] = &[
    "James", "Robert", "Michael", "David", "William", "Joseph", "Thomas", "Carlos", "Hiroshi", "Ahmed", "Liam", "Noah", "Mateo", "Oliver", "Samuel", "Daniel",
    "Anthony", "Marcus", "Kwame", "Ravi", "Luis", "Andre", "Peter", "Gabriel", "Isaac", "Tomasz", "Elijah", "Henry", "Omar", "Jun",
];
pub const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Maria",
    "Sofia",
    "Aisha",
    "Mei",
    "Olivia",
    "Emma",
    "Amelia",
    "Chloé",
    "Zoë",
    "Hannah",
    "Grace",
    "Rosa",
    "Priya",
    "Naomi",
    "Fatima",
    "Ingrid",
    "Yesenia",
    "Keiko",
    "Abigail",
    "Ruth",
    "Claire",
    "Esther",
    "Lucia",
    "Nadia",
    "Beatriz",
];
/// 61 family names: a prime, so that stepping through them by a fixed stride visits each once.
pub const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Nguyen",
    "Kim",
    "Okafor",
    "Müller",
    "O'Brien",
    "Kowalski",
    "Haddad",
    "Schmidt",
    "Rossi",
    "Yamamoto",
    "Patel",
    "Cohen",
    "Sullivan",
    "Fitzgerald",
    "Mendes",
    "Andersson",
    "Novak",
    "Chen",
    "Park",
    "Osei",
    "Murphy",
    "Reyes",
    "Tran",
    "Hughes",
    "Bianchi",
    "Lindqvist",
    "Moreau",
    "Adeyemi",
    "Kaplan",
    "Walsh",
    "Ferreira",
    "Gallagher",
    "Horvath",
    "Ibrahim",
    "Jensen",
    "Kelley",
    "Lambert",
    "MacDonald",
    "Nakamura",
    "Olsen",
    "Pereira",
    "Quinn",
    "Romero",
    "Sato",
    "Torres",
    "Underwood",
    "Vargas",
    "Whitaker",
    "Xu",
    "Young",
    "Zimmerman",
];
pub const CITIES: &[(&str, &str, &str, &str)] = &[
    ("Boston", "MA", "02118", "617"),
    ("Worcester", "MA", "01608", "508"),
    ("Springfield", "MA", "01103", "413"),
    ("Cambridge", "MA", "02139", "617"),
    ("Lowell", "MA", "01852", "978"),
    ("Quincy", "MA", "02169", "617"),
    ("Brockton", "MA", "02301", "508"),
    ("Somerville", "MA", "02143", "617"),
];
pub const STREETS: &[&str] = &[
    "Maple Street",
    "Oak Avenue",
    "Washington Street",
    "Elm Road",
    "Harbor Way",
    "Chestnut Lane",
    "Beacon Street",
    "Pine Court",
    "Summer Street",
    "Cedar Terrace",
    "Prospect Hill Road",
    "Linden Avenue",
];

/// (OMB race code, display)
pub const RACES: &[(&str, &str)] = &[
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2076-8", "Native Hawaiian or Other Pacific Islander"),
];
