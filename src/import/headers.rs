//! Header matching: case-, accent- and punctuation-insensitive, by whole name.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use super::ImportError;

/// The client field a column feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Phone,
    Name,
    Email,
    Address,
    Category,
    ExternalId,
}

/// API.md §4, already normalised (see [`normalize`]): `phone_number` is
/// `phone number`, `e-mail` is `e mail`, accents are gone.
const ALIASES: &[(Field, &[&str])] = &[
    (
        Field::Phone,
        &[
            "telefono",
            "tel",
            "celular",
            "cel",
            "movil",
            "phone",
            "phone number",
            "numero",
            "whatsapp",
        ],
    ),
    (
        Field::Name,
        &[
            "nombre",
            "nombres",
            "name",
            "cliente",
            "nombre completo",
            "full name",
        ],
    ),
    (
        Field::Email,
        &["email", "correo", "e mail", "correo electronico"],
    ),
    (Field::Address, &["direccion", "address", "domicilio"]),
    (Field::Category, &["categoria", "category"]),
    (
        Field::ExternalId,
        &["id", "id cliente", "cedula", "documento", "external id"],
    ),
];

/// Lower case, accents removed, every run of other characters one space,
/// no space at either end: `"  Teléfono_Celular: "` → `"telefono celular"`.
pub fn normalize(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    let mut gap = false;
    for ch in header.chars().flat_map(char::to_lowercase) {
        // Decomposed accents (NFD, as macOS writes names): the base letter
        // came just before, the mark itself is dropped.
        if is_combining_mark(ch) {
            continue;
        }
        let base = fold_accent(ch);
        if base.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            out.push(base);
            gap = false;
        } else {
            gap = true;
        }
    }
    out
}

fn is_combining_mark(ch: char) -> bool {
    matches!(ch, '\u{0300}'..='\u{036f}')
}

/// The unaccented letter for the accented Latin letters Spanish and its
/// neighbours use; any other character is kept.
fn fold_accent(ch: char) -> char {
    match ch {
        'á' | 'à' | 'â' | 'ä' | 'ã' | 'å' => 'a',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'ñ' => 'n',
        'ç' => 'c',
        other => other,
    }
}

/// The field a header names, if it names one (whole name, never a substring).
pub fn field_of(header: &str) -> Option<Field> {
    let name = normalize(header);
    ALIASES
        .iter()
        .find(|(_, aliases)| aliases.contains(&name.as_str()))
        .map(|(field, _)| *field)
}

/// A variable key: the header in snake_case ASCII (`"Monto Deuda"` → `monto_deuda`).
pub fn variable_key(header: &str) -> String {
    normalize(header)
        .chars()
        .map(|c| if c == ' ' { '_' } else { c })
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<String>()
        .trim_matches('_')
        .to_owned()
}

/// What one column of the sheet feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// No header: the column is ignored.
    Skip,
    Field(Field),
    /// Index into [`Columns::keys`].
    Variable(usize),
}

/// How the header's columns map to client fields and variables.
#[derive(Debug)]
pub(crate) struct Columns {
    /// One per header cell, by column index.
    pub slots: Vec<Slot>,
    pub keys: Vec<String>,
    pub phone: usize,
    /// The phone header as written (trimmed), for `errors[].column`.
    pub phone_header: String,
    /// Every header as written (trimmed), by column index, for errors.
    pub headers: Vec<String>,
}

impl Columns {
    /// The first column naming a field feeds it; a later column with a name
    /// already taken (a second `Celular`) becomes a variable. Variable keys
    /// that repeat get `_2`, `_3`…; a header with nothing ASCII left becomes
    /// `columna_<n>` (1-based column).
    pub fn from_header(cells: &[Cow<'_, str>]) -> Result<Columns, ImportError> {
        let mut slots = Vec::with_capacity(cells.len());
        let mut headers = Vec::with_capacity(cells.len());
        let mut keys: Vec<String> = Vec::new();
        // Keys given so far, and the next suffix to try for each base: a
        // header row repeating one name 16,384 times stays linear.
        let mut given: HashSet<String> = HashSet::new();
        let mut next_suffix: HashMap<String, usize> = HashMap::new();
        let mut phone = None;
        let mut taken: Vec<Field> = Vec::new();
        for (i, header) in cells.iter().enumerate() {
            let header = header.trim();
            headers.push(header.to_owned());
            if header.is_empty() {
                slots.push(Slot::Skip);
                continue;
            }
            match field_of(header) {
                Some(field) if !taken.contains(&field) => {
                    taken.push(field);
                    if field == Field::Phone {
                        phone = Some((i, header));
                    }
                    slots.push(Slot::Field(field));
                }
                _ => {
                    let base = variable_key(header);
                    let base = if base.is_empty() {
                        format!("columna_{}", i + 1)
                    } else {
                        base
                    };
                    let mut key = base.clone();
                    let n = next_suffix.entry(base.clone()).or_insert(2);
                    while given.contains(&key) {
                        key = format!("{base}_{n}");
                        *n += 1;
                    }
                    given.insert(key.clone());
                    slots.push(Slot::Variable(keys.len()));
                    keys.push(key);
                }
            }
        }
        let (phone, phone_header) = phone.ok_or(ImportError::NoPhoneColumn)?;
        Ok(Columns {
            phone_header: phone_header.to_owned(),
            headers,
            slots,
            keys,
            phone,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_whole_normalised_names() {
        assert_eq!(field_of(" TELÉFONO "), Some(Field::Phone));
        assert_eq!(field_of("Teléfono:"), Some(Field::Phone));
        assert_eq!(field_of("Móvil"), Some(Field::Phone));
        assert_eq!(field_of("Phone_Number"), Some(Field::Phone));
        assert_eq!(field_of("Número"), Some(Field::Phone));
        assert_eq!(field_of("WhatsApp"), Some(Field::Phone));
        assert_eq!(field_of("E-mail"), Some(Field::Email));
        assert_eq!(field_of("Correo Electrónico"), Some(Field::Email));
        assert_eq!(field_of("Cédula"), Some(Field::ExternalId));
        assert_eq!(field_of("ID_Cliente"), Some(Field::ExternalId));
        assert_eq!(field_of("external_id"), Some(Field::ExternalId));
        assert_eq!(field_of("Nombre Completo"), Some(Field::Name));
        assert_eq!(field_of("Full Name"), Some(Field::Name));
        assert_eq!(field_of("Dirección"), Some(Field::Address));
        assert_eq!(field_of("Categoría"), Some(Field::Category));
        // Whole names only: no substring matches.
        assert_eq!(field_of("  Teléfono Celular "), None);
        assert_eq!(field_of("Nombre del asesor"), None);
        assert_eq!(field_of("Telefonos"), None);
        assert_eq!(field_of("Identificación"), None);
    }

    #[test]
    fn decomposed_accents_match_like_composed_ones() {
        // "Teléfono" and "Categoría" in NFD: a base letter plus U+0301.
        assert_eq!(field_of("Tele\u{301}fono"), Some(Field::Phone));
        assert_eq!(field_of("CATEGORI\u{301}A"), Some(Field::Category));
        assert_eq!(variable_key("An\u{303}o"), "ano");
    }

    #[test]
    fn variable_keys_are_snake_case_ascii() {
        assert_eq!(variable_key("Monto Deuda"), "monto_deuda");
        assert_eq!(
            variable_key("  Fecha de Vencimiento "),
            "fecha_de_vencimiento"
        );
        assert_eq!(variable_key("Año (2025)"), "ano_2025");
        assert_eq!(variable_key("Teléfono Celular"), "telefono_celular");
        assert_eq!(variable_key("Ciudad 日本"), "ciudad");
        assert_eq!(variable_key("¿?"), "");
    }

    #[test]
    fn repeated_and_unnamed_headers_get_their_own_keys() {
        let cells: Vec<Cow<str>> = ["Teléfono", "Celular", "Nota", "nota", "", "¿?"]
            .into_iter()
            .map(Cow::Borrowed)
            .collect();
        let columns = Columns::from_header(&cells).expect("phone column");
        assert_eq!(columns.phone, 0);
        assert_eq!(columns.phone_header, "Teléfono");
        assert_eq!(columns.keys, ["celular", "nota", "nota_2", "columna_6"]);
        assert_eq!(columns.slots[4], Slot::Skip);
    }
}
