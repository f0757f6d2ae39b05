// binary-parser 2.3.0 ships typings its package.json "exports" does not expose to NodeNext resolution.
declare module 'binary-parser' {
  export { Parser } from 'binary-parser/dist/binary_parser.js';
}
