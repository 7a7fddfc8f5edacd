//! A parsed XML document: a small read-only tree built from quick-xml events, with namespaces
//! resolved. It is what the canonicaliser and the signature verifier walk; it keeps exactly the
//! information of the XPath data model that Canonical XML needs (elements with their namespace
//! declarations and attributes, text, comments, processing instructions), nothing else.
//!
//! Safe by construction, as `cda.rs`: a DOCTYPE is refused (no DTD, so no entity declarations
//! and no external entities); only the five predefined entities and character references are
//! resolved, any other entity reference is an error; the input size and the element depth are
//! bounded; the input must be UTF-8 (the only encoding our peers and we produce).
//!
//! What the XML parser must do before canonicalisation (C14N 1.0 §2.1, XML 1.0 §2.11, §3.3.3)
//! is done here: line ends normalised to LF, attribute values normalised (literal whitespace
//! to spaces, references expanded), character references and predefined entities expanded,
//! CDATA sections turned into text.

use quick_xml::events::{BytesStart, Event};

/// Largest document accepted by [`Document::parse`] (a lot signature is about 6 KB, the
/// whitelist about 20 KB; the limit leaves room and still bounds memory).
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 256;

/// The namespace the `xml` prefix is bound to by definition.
pub const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XMLNS_NS: &str = "http://www.w3.org/2000/xmlns/";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("the document is {0} bytes, over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("the document declares a DOCTYPE; DTDs are not accepted")]
    Doctype,
    #[error("the document uses the entity `&{0};`, which is not one of XML's predefined entities")]
    Entity(String),
    #[error("the document nests elements deeper than {0}")]
    TooDeep(usize),
    #[error("the document is not UTF-8")]
    NotUtf8,
    #[error("the document declares the encoding `{0}`; only UTF-8 is accepted")]
    Encoding(String),
    #[error("the prefix `{0}` is used but not declared")]
    UnboundPrefix(String),
    #[error("invalid namespace declaration: {0}")]
    Namespace(String),
    #[error("the document is not well-formed XML: {0}")]
    Malformed(String),
    #[error("the document has no root element")]
    NoRoot,
    #[error("no element has the attribute {attribute}=\"{value}\"")]
    IdNotFound { attribute: String, value: String },
    #[error("several elements have the attribute {attribute}=\"{value}\"")]
    DuplicateId { attribute: String, value: String },
}

/// Index of a node in its [`Document`].
pub type NodeId = usize;

/// An attribute (never a namespace declaration: those are in [`Element::namespace_decls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub prefix: String,
    pub local: String,
    /// Namespace URI; empty for an unprefixed attribute (attributes do not take the default
    /// namespace).
    pub namespace: String,
    /// The normalised value (XML 1.0 §3.3.3).
    pub value: String,
}

impl Attribute {
    pub fn qname(&self) -> String {
        qname(&self.prefix, &self.local)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub prefix: String,
    pub local: String,
    /// Namespace URI of the element; empty when it is in no namespace.
    pub namespace: String,
    /// The declarations written on this element, in document order: (prefix, URI); the
    /// default namespace has the prefix "" and `xmlns=""` the URI "".
    pub namespace_decls: Vec<(String, String)>,
    pub attributes: Vec<Attribute>,
    pub children: Vec<NodeId>,
}

impl Element {
    pub fn qname(&self) -> String {
        qname(&self.prefix, &self.local)
    }

    /// The value of the attribute with this local name and no namespace.
    pub fn attribute(&self, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.namespace.is_empty() && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// Whether this is the element `{namespace}local`.
    pub fn is(&self, namespace: &str, local: &str) -> bool {
        self.namespace == namespace && self.local == local
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Element(Element),
    /// Character data (text, references and CDATA sections merged), line ends normalised.
    Text(String),
    Comment(String),
    ProcessingInstruction {
        target: String,
        /// The data, without the whitespace that separates it from the target.
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    pub parent: Option<NodeId>,
}

/// A whole parsed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    nodes: Vec<Node>,
    /// Children of the document node, in order: comments and PIs around the root element.
    top: Vec<NodeId>,
    root: NodeId,
}

fn qname(prefix: &str, local: &str) -> String {
    if prefix.is_empty() {
        local.to_string()
    } else {
        format!("{prefix}:{local}")
    }
}

/// Line-end normalisation (XML 1.0 §2.11): CRLF and lone CR become LF.
fn normalize_eol(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn predefined(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => return None,
    })
}

/// Resolves the inside of a reference (`#x41`, `#65`, `amp`).
fn resolve_reference(name: &str) -> Result<char, XmlError> {
    if let Some(num) = name.strip_prefix('#') {
        let (digits, radix) = match num.strip_prefix('x') {
            Some(hex) => (hex, 16),
            None => (num, 10),
        };
        let bad = || XmlError::Malformed(format!("invalid character reference `&{name};`"));
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return Err(bad());
        }
        let code = u32::from_str_radix(digits, radix).map_err(|_| bad())?;
        let c = char::from_u32(code).ok_or_else(bad)?;
        if !is_xml_char(c) {
            return Err(bad());
        }
        Ok(c)
    } else {
        predefined(name).ok_or_else(|| XmlError::Entity(name.to_string()))
    }
}

/// Attribute-value normalisation for CDATA attributes (there is no DTD, so every attribute is
/// CDATA): line ends normalised, then each literal whitespace character becomes a space, and
/// references are expanded (a `&#xA;` stays a line feed: that is how a value keeps one).
fn normalize_attribute_value(raw: &str) -> Result<String, XmlError> {
    let raw = normalize_eol(raw);
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw.as_str();
    while let Some(i) = rest.find(['&', '<', '\t', '\n']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        match c {
            b'&' => {
                let end = rest[i..]
                    .find(';')
                    .ok_or_else(|| XmlError::Malformed("unterminated reference".into()))?;
                out.push(resolve_reference(&rest[i + 1..i + end])?);
                rest = &rest[i + end + 1..];
            }
            b'<' => return Err(XmlError::Malformed("`<` in an attribute value".into())),
            _ => {
                out.push(' ');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Names are checked by quick-xml only loosely; a prefix must itself be a non-empty name.
fn split_qname(name: &str) -> Result<(&str, &str), XmlError> {
    match name.split_once(':') {
        None => Ok(("", name)),
        Some((p, l)) if !p.is_empty() && !l.is_empty() && !l.contains(':') => Ok((p, l)),
        Some(_) => Err(XmlError::Malformed(format!(
            "invalid qualified name `{name}`"
        ))),
    }
}

struct Builder {
    nodes: Vec<Node>,
    top: Vec<NodeId>,
    root: Option<NodeId>,
    /// Open elements.
    stack: Vec<NodeId>,
    /// In-scope namespaces at each open element (prefix → URI); index 0 is the document.
    scopes: Vec<Vec<(String, String)>>,
    max_depth: usize,
}

impl Builder {
    fn lookup(&self, prefix: &str) -> Option<&str> {
        if prefix == "xml" {
            return Some(XML_NS);
        }
        let scope = self.scopes.last()?;
        scope
            .iter()
            .rev()
            .find(|(p, _)| p == prefix)
            .map(|(_, u)| u.as_str())
    }

    fn push(&mut self, kind: NodeKind) -> NodeId {
        let id = self.nodes.len();
        let parent = self.stack.last().copied();
        self.nodes.push(Node { kind, parent });
        match parent {
            Some(p) => {
                if let NodeKind::Element(e) = &mut self.nodes[p].kind {
                    e.children.push(id);
                }
            }
            None => self.top.push(id),
        }
        id
    }

    fn text(&mut self, s: &str) -> Result<(), XmlError> {
        if s.is_empty() {
            return Ok(());
        }
        if self.stack.is_empty() {
            // Only whitespace may sit outside the root element; C14N drops it.
            if s.chars().all(|c| matches!(c, ' ' | '\t' | '\n' | '\r')) {
                return Ok(());
            }
            return Err(XmlError::Malformed("text outside the root element".into()));
        }
        if let Some(c) = s.chars().find(|c| !is_xml_char(*c)) {
            return Err(XmlError::Malformed(format!(
                "character U+{:04X} is not allowed in XML",
                c as u32
            )));
        }
        // Adjacent character data (text, references, CDATA) is one text node in the data
        // model.
        if let Some(&last) = self.stack.last().and_then(|p| match &self.nodes[*p].kind {
            NodeKind::Element(e) => e.children.last(),
            _ => None,
        }) {
            if let NodeKind::Text(t) = &mut self.nodes[last].kind {
                t.push_str(s);
                return Ok(());
            }
        }
        self.push(NodeKind::Text(s.to_string()));
        Ok(())
    }

    fn start(&mut self, e: &BytesStart) -> Result<(), XmlError> {
        if self.stack.is_empty() && self.root.is_some() {
            return Err(XmlError::Malformed("more than one root element".into()));
        }
        if self.stack.len() >= self.max_depth {
            return Err(XmlError::TooDeep(self.max_depth));
        }
        let name = e.name().as_ref().to_string();
        let mut decls: Vec<(String, String)> = Vec::new();
        let mut raw_attrs: Vec<(String, String)> = Vec::new();
        for a in e.attributes().with_checks(true) {
            let a = a.map_err(|x| XmlError::Malformed(x.to_string()))?;
            let key = a.key.as_ref().to_string();
            let value = normalize_attribute_value(&a.value)?;
            if key == "xmlns" {
                if value == XML_NS || value == XMLNS_NS {
                    return Err(XmlError::Namespace(format!(
                        "the default namespace cannot be `{value}`"
                    )));
                }
                decls.push((String::new(), value));
            } else if let Some(p) = key.strip_prefix("xmlns:") {
                if p == "xmlns" || (p == "xml") != (value == XML_NS) || value == XMLNS_NS {
                    return Err(XmlError::Namespace(format!("xmlns:{p}=\"{value}\"")));
                }
                if value.is_empty() {
                    // Namespaces in XML 1.0 has no prefix undeclaration.
                    return Err(XmlError::Namespace(format!("xmlns:{p}=\"\"")));
                }
                split_qname(p)?;
                decls.push((p.to_string(), value));
            } else {
                raw_attrs.push((key, value));
            }
        }
        let mut scope = self.scopes.last().cloned().unwrap_or_default();
        for (p, u) in &decls {
            scope.retain(|(q, _)| q != p);
            scope.push((p.clone(), u.clone()));
        }
        self.scopes.push(scope);
        let (prefix, local) = split_qname(&name)?;
        let namespace = match self.lookup(prefix) {
            Some(u) => u.to_string(),
            None if prefix.is_empty() => String::new(),
            None => return Err(XmlError::UnboundPrefix(prefix.to_string())),
        };
        let mut attributes = Vec::with_capacity(raw_attrs.len());
        for (key, value) in raw_attrs {
            let (p, l) = split_qname(&key)?;
            let ns = if p.is_empty() {
                String::new()
            } else {
                self.lookup(p)
                    .ok_or_else(|| XmlError::UnboundPrefix(p.to_string()))?
                    .to_string()
            };
            if attributes
                .iter()
                .any(|a: &Attribute| a.namespace == ns && a.local == l)
            {
                return Err(XmlError::Malformed(format!(
                    "the attribute `{key}` is repeated"
                )));
            }
            attributes.push(Attribute {
                prefix: p.to_string(),
                local: l.to_string(),
                namespace: ns,
                value,
            });
        }
        let el = Element {
            prefix: prefix.to_string(),
            local: local.to_string(),
            namespace,
            namespace_decls: decls,
            attributes,
            children: Vec::new(),
        };
        let id = self.push(NodeKind::Element(el));
        if self.stack.is_empty() {
            self.root = Some(id);
        }
        self.stack.push(id);
        Ok(())
    }
}

fn malformed(e: impl std::fmt::Display) -> XmlError {
    XmlError::Malformed(e.to_string())
}

impl Document {
    /// Parses `input` with the default limits ([`MAX_DOCUMENT`], [`MAX_DEPTH`]).
    pub fn parse(input: &[u8]) -> Result<Document, XmlError> {
        Document::parse_with_limits(input, MAX_DOCUMENT, MAX_DEPTH)
    }

    pub fn parse_with_limits(
        input: &[u8],
        max_bytes: usize,
        max_depth: usize,
    ) -> Result<Document, XmlError> {
        if input.len() > max_bytes {
            return Err(XmlError::TooLarge(input.len(), max_bytes));
        }
        let text = std::str::from_utf8(input).map_err(|_| XmlError::NotUtf8)?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut reader = quick_xml::Reader::from_str(text);
        let cfg = reader.config_mut();
        cfg.check_end_names = true;
        cfg.check_comments = true;
        cfg.expand_empty_elements = true;
        let mut b = Builder {
            nodes: Vec::new(),
            top: Vec::new(),
            root: None,
            stack: Vec::new(),
            scopes: vec![Vec::new()],
            max_depth,
        };
        loop {
            match reader.read_event().map_err(malformed)? {
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Decl(d) => {
                    if let Some(enc) = d.encoding() {
                        let enc = enc.map_err(malformed)?;
                        let enc = enc.to_string();
                        if !enc.eq_ignore_ascii_case("utf-8") {
                            return Err(XmlError::Encoding(enc));
                        }
                    }
                }
                Event::Start(e) => b.start(&e)?,
                Event::Empty(e) => {
                    // Not produced with expand_empty_elements; handled for completeness.
                    b.start(&e)?;
                    b.stack.pop();
                    b.scopes.pop();
                }
                Event::End(_) => {
                    b.stack.pop();
                    b.scopes.pop();
                }
                Event::Text(t) => {
                    let s = t.xml10_content();
                    if s.contains("]]>") {
                        return Err(XmlError::Malformed("`]]>` in text".into()));
                    }
                    b.text(&s)?
                }
                Event::CData(t) => {
                    if b.stack.is_empty() {
                        return Err(XmlError::Malformed("CDATA outside the root element".into()));
                    }
                    b.text(&t.xml10_content())?
                }
                Event::GeneralRef(r) => {
                    if b.stack.is_empty() {
                        return Err(XmlError::Malformed(
                            "reference outside the root element".into(),
                        ));
                    }
                    let c = resolve_reference(&r)?;
                    b.text(c.encode_utf8(&mut [0; 4]))?
                }
                Event::Comment(t) => {
                    let s = t.xml10_content().to_string();
                    b.push(NodeKind::Comment(s));
                }
                Event::PI(p) => {
                    let target = p.target().to_string();
                    if target.eq_ignore_ascii_case("xml") {
                        return Err(XmlError::Malformed(
                            "an XML declaration that is not at the start".into(),
                        ));
                    }
                    let data = normalize_eol(p.content())
                        .trim_start_matches([' ', '\t', '\n'])
                        .to_string();
                    b.push(NodeKind::ProcessingInstruction { target, data });
                }
                Event::Eof => break,
            }
        }
        if !b.stack.is_empty() {
            return Err(XmlError::Malformed(
                "unclosed element at end of input".into(),
            ));
        }
        let root = b.root.ok_or(XmlError::NoRoot)?;
        Ok(Document {
            nodes: b.nodes,
            top: b.top,
            root,
        })
    }

    /// The document element.
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// Children of the document node (the root element and the comments and PIs around it).
    pub fn top_level(&self) -> &[NodeId] {
        &self.top
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    /// The element `id`, if `id` is an element.
    pub fn element(&self, id: NodeId) -> Option<&Element> {
        match &self.nodes.get(id)?.kind {
            NodeKind::Element(e) => Some(e),
            _ => None,
        }
    }

    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.nodes.get(id)?.parent
    }

    /// The child elements of `id`, in order.
    pub fn child_elements(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.element(id)
            .map(|e| e.children.as_slice())
            .unwrap_or(&[])
            .iter()
            .copied()
            .filter(|c| self.element(*c).is_some())
    }

    /// The first child element `{namespace}local` of `id`.
    pub fn child(&self, id: NodeId, namespace: &str, local: &str) -> Option<NodeId> {
        self.child_elements(id)
            .find(|c| self.element(*c).is_some_and(|e| e.is(namespace, local)))
    }

    /// The child elements `{namespace}local` of `id`.
    pub fn children_named<'a>(
        &'a self,
        id: NodeId,
        namespace: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = NodeId> + 'a {
        self.child_elements(id)
            .filter(move |c| self.element(*c).is_some_and(|e| e.is(namespace, local)))
    }

    /// The concatenated text of the descendants of `id` (XPath string-value).
    pub fn text(&self, id: NodeId) -> String {
        let mut out = String::new();
        self.collect_text(id, &mut out);
        out
    }

    fn collect_text(&self, id: NodeId, out: &mut String) {
        match &self.nodes[id].kind {
            NodeKind::Text(t) => out.push_str(t),
            NodeKind::Element(e) => {
                for c in &e.children {
                    self.collect_text(*c, out);
                }
            }
            _ => {}
        }
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    pub fn is_ancestor_or_self(&self, ancestor: NodeId, id: NodeId) -> bool {
        let mut cur = Some(id);
        while let Some(c) = cur {
            if c == ancestor {
                return true;
            }
            cur = self.parent(c);
        }
        false
    }

    /// Namespaces in scope at element `id` (prefix → URI, the default as ""), the nearest
    /// declaration winning; a default undeclared by `xmlns=""` appears with the URI "".
    pub fn in_scope_namespaces(&self, id: NodeId) -> Vec<(String, String)> {
        let mut chain = Vec::new();
        let mut cur = Some(id);
        while let Some(c) = cur {
            chain.push(c);
            cur = self.parent(c);
        }
        let mut scope: Vec<(String, String)> = Vec::new();
        for c in chain.iter().rev() {
            if let Some(e) = self.element(*c) {
                for (p, u) in &e.namespace_decls {
                    scope.retain(|(q, _)| q != p);
                    scope.push((p.clone(), u.clone()));
                }
            }
        }
        scope
    }

    /// The one element whose unqualified attribute `attribute` equals `value`. Two such
    /// elements are an error, not a choice: picking one is how signature-wrapping attacks
    /// make a verifier check one element while the application reads another.
    pub fn element_by_id(&self, attribute: &str, value: &str) -> Result<NodeId, XmlError> {
        let mut found = None;
        for (id, n) in self.nodes.iter().enumerate() {
            if let NodeKind::Element(e) = &n.kind {
                if e.attribute(attribute) == Some(value) {
                    if found.is_some() {
                        return Err(XmlError::DuplicateId {
                            attribute: attribute.to_string(),
                            value: value.to_string(),
                        });
                    }
                    found = Some(id);
                }
            }
        }
        found.ok_or_else(|| XmlError::IdNotFound {
            attribute: attribute.to_string(),
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespaces_text_and_references() {
        let d = Document::parse(
            b"<?xml version=\"1.0\"?>\n<!--c--><a xmlns=\"urn:a\" xmlns:b=\"urn:b\" b:x=\"1&#xA;2\r\n3\"><b:c>x&amp;<![CDATA[<y>]]>\r\nz</b:c></a>",
        )
        .unwrap();
        let root = d.element(d.root()).unwrap();
        assert_eq!(root.namespace, "urn:a");
        assert_eq!(root.attributes[0].namespace, "urn:b");
        assert_eq!(root.attributes[0].value, "1\n2 3");
        let c = d.child(d.root(), "urn:b", "c").unwrap();
        assert_eq!(d.text(c), "x&<y>\nz");
        assert_eq!(d.top_level().len(), 2);
    }

    #[test]
    fn refuses_what_is_unsafe_or_malformed() {
        assert_eq!(
            Document::parse(b"<!DOCTYPE a [<!ENTITY e \"x\">]><a>&e;</a>"),
            Err(XmlError::Doctype)
        );
        assert_eq!(
            Document::parse(b"<a>&e;</a>"),
            Err(XmlError::Entity("e".into()))
        );
        assert_eq!(
            Document::parse(b"<a x=\"&e;\"/>"),
            Err(XmlError::Entity("e".into()))
        );
        assert_eq!(
            Document::parse(b"<p:a/>"),
            Err(XmlError::UnboundPrefix("p".into()))
        );
        assert!(matches!(
            Document::parse(b"<a><b></a>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            Document::parse(b"<a/><b/>"),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            Document::parse(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a/>"),
            Err(XmlError::Encoding(_))
        ));
        assert_eq!(Document::parse(b"<a>\xff</a>"), Err(XmlError::NotUtf8));
        assert_eq!(
            Document::parse_with_limits(b"<a/>", 3, 10),
            Err(XmlError::TooLarge(4, 3))
        );
        assert_eq!(
            Document::parse_with_limits(b"<a><a><a/></a></a>", 100, 2),
            Err(XmlError::TooDeep(2))
        );
        assert_eq!(Document::parse(b"<!--x-->"), Err(XmlError::NoRoot));
    }

    #[test]
    fn ids_must_be_unique() {
        let d = Document::parse(b"<a><b Id=\"x\"/><c Id=\"x\"/><d Id=\"y\"/></a>").unwrap();
        assert!(matches!(
            d.element_by_id("Id", "x"),
            Err(XmlError::DuplicateId { .. })
        ));
        assert_eq!(
            d.element(d.element_by_id("Id", "y").unwrap())
                .unwrap()
                .local,
            "d"
        );
        assert!(matches!(
            d.element_by_id("Id", "z"),
            Err(XmlError::IdNotFound { .. })
        ));
    }
}
