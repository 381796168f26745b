//! Price classes: a small, fixed, published set; higher price means higher priority.

use std::fmt;

/// One price class: a name developers pick at a trigger, and its price per CPU-second.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceClass {
    pub name: String,
    /// Price per CPU-second, in micro-cents. Only relative prices matter to the policies.
    pub price: f64,
}

/// Index of a class in its [`ClassSet`]; a larger index is a higher price and a higher priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(pub u8);

impl ClassId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// Why a set of classes was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClassError {
    #[error("at least one price class is required")]
    Empty,
    #[error("at most {max} price classes are supported, got {got}")]
    TooMany { max: usize, got: usize },
    #[error("price class name must not be empty")]
    EmptyName,
    #[error("price class `{0}` is defined twice")]
    DuplicateName(String),
    #[error("price of class `{name}` must be a positive finite number, got {price}")]
    BadPrice { name: String, price: f64 },
    #[error("classes `{a}` and `{b}` have the same price {price}; prices order priority, so they must differ")]
    DuplicatePrice { a: String, b: String, price: f64 },
}

/// The configured classes, sorted by ascending price so that `ClassId` order is priority order.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassSet {
    classes: Vec<PriceClass>,
}

impl ClassSet {
    /// At most this many classes: a published price list is short, and `ClassId` is a `u8`.
    pub const LEN_MAX: usize = 64;

    pub fn new(mut classes: Vec<PriceClass>) -> Result<Self, ClassError> {
        if classes.is_empty() {
            return Err(ClassError::Empty);
        }
        if classes.len() > Self::LEN_MAX {
            return Err(ClassError::TooMany {
                max: Self::LEN_MAX,
                got: classes.len(),
            });
        }
        for (i, c) in classes.iter().enumerate() {
            if c.name.is_empty() {
                return Err(ClassError::EmptyName);
            }
            if !(c.price.is_finite() && c.price > 0.0) {
                return Err(ClassError::BadPrice {
                    name: c.name.clone(),
                    price: c.price,
                });
            }
            if classes[..i].iter().any(|o| o.name == c.name) {
                return Err(ClassError::DuplicateName(c.name.clone()));
            }
        }
        classes.sort_by(|a, b| a.price.total_cmp(&b.price));
        for w in classes.windows(2) {
            if w[0].price == w[1].price {
                return Err(ClassError::DuplicatePrice {
                    a: w[0].name.clone(),
                    b: w[1].name.clone(),
                    price: w[0].price,
                });
            }
        }
        Ok(Self { classes })
    }

    /// The default published set of `DESIGN.md`: batch 0.5, standard 1.0, interactive 1.5,
    /// critical 2.0 micro-cents per CPU-second.
    pub fn default_four() -> Self {
        let c = |name: &str, price| PriceClass {
            name: name.to_string(),
            price,
        };
        Self::new(vec![
            c("batch", 0.5),
            c("standard", 1.0),
            c("interactive", 1.5),
            c("critical", 2.0),
        ])
        .expect("the default classes are valid")
    }

    pub fn len(&self) -> usize {
        self.classes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    pub fn get(&self, id: ClassId) -> &PriceClass {
        &self.classes[id.index()]
    }

    pub fn price(&self, id: ClassId) -> f64 {
        self.classes[id.index()].price
    }

    pub fn by_name(&self, name: &str) -> Option<ClassId> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .map(|i| ClassId(i as u8))
    }

    /// The highest class (highest price).
    pub fn top(&self) -> ClassId {
        ClassId((self.classes.len() - 1) as u8)
    }

    pub fn max_price(&self) -> f64 {
        self.classes[self.classes.len() - 1].price
    }

    /// Classes in ascending priority.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (ClassId, &PriceClass)> + '_ {
        self.classes
            .iter()
            .enumerate()
            .map(|(i, c)| (ClassId(i as u8), c))
    }

    pub fn prices(&self) -> Vec<f64> {
        self.classes.iter().map(|c| c.price).collect()
    }
}

/// One memory price for every class, micro-cents per GB-second of memory actually used: the
/// default published price (`DESIGN.md` fixes only the CPU prices' ratios; this one is chosen so
/// that 128 MB held for a CPU-second at `standard` costs an eighth of that CPU-second).
pub const DEFAULT_MEMORY_PRICE: f64 = 1.0;

/// What an invocation costs, micro-cents (`DESIGN.md`, "Billing"): its CPU-seconds at its
/// class's price plus the memory it actually used, in GB-seconds, at the one memory price.
pub fn cost(
    classes: &ClassSet,
    class: ClassId,
    cpu_seconds: f64,
    gb_seconds: f64,
    memory_price: f64,
) -> f64 {
    cpu_seconds * classes.price(class) + gb_seconds * memory_price
}

impl fmt::Display for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.classes.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", c.name, c.price)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, price: f64) -> PriceClass {
        PriceClass {
            name: name.into(),
            price,
        }
    }

    #[test]
    fn sorted_by_price_so_ids_are_priorities() {
        let set = ClassSet::new(vec![c("hi", 2.0), c("lo", 0.5), c("mid", 1.0)]).unwrap();
        assert_eq!(set.by_name("lo"), Some(ClassId(0)));
        assert_eq!(set.by_name("mid"), Some(ClassId(1)));
        assert_eq!(set.top(), ClassId(2));
        assert_eq!(set.max_price(), 2.0);
        assert_eq!(set.by_name("nope"), None);
    }

    #[test]
    fn refuses_bad_sets_with_the_reason() {
        assert_eq!(ClassSet::new(vec![]), Err(ClassError::Empty));
        assert_eq!(
            ClassSet::new(vec![c("a", 1.0), c("a", 2.0)]),
            Err(ClassError::DuplicateName("a".into()))
        );
        assert!(matches!(
            ClassSet::new(vec![c("a", -1.0)]),
            Err(ClassError::BadPrice { .. })
        ));
        assert!(matches!(
            ClassSet::new(vec![c("a", f64::NAN)]),
            Err(ClassError::BadPrice { .. })
        ));
        assert!(matches!(
            ClassSet::new(vec![c("a", 1.0), c("b", 1.0)]),
            Err(ClassError::DuplicatePrice { .. })
        ));
        assert_eq!(ClassSet::new(vec![c("", 1.0)]), Err(ClassError::EmptyName));
    }

    #[test]
    fn cost_is_cpu_at_the_class_price_plus_memory_at_one_price() {
        let classes = ClassSet::default_four();
        let top = classes.top();
        assert_eq!(cost(&classes, top, 1.5, 0.0, DEFAULT_MEMORY_PRICE), 3.0);
        assert_eq!(cost(&classes, ClassId(0), 2.0, 0.25, 4.0), 2.0);
        assert_eq!(
            cost(&classes, ClassId(1), 0.0, 3.0, DEFAULT_MEMORY_PRICE),
            3.0
        );
    }
}
