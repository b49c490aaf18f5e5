/** The XML parser (npm:saxes) in a module of its own: xml.ts loads it only when XML must be read. */

export { SaxesParser } from "saxes";
