// Lint for the whole repo (npm run lint; test/lint.test.ts runs it in npm test): typescript-eslint's
// type-aware recommended rules over the TypeScript, the recommended JavaScript
// rules over the scripts. Formatting is prettier's (.prettierrc.json).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.cache/**', 'reports/**', '.stryker-tmp/**', 'coverage/**'] },
  js.configs.recommended,
  { languageOptions: { globals: globals.node } },
  {
    files: ['**/*.ts'],
    extends: [...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: {
        project: ['./tsconfig.test.json', './tsconfig.examples.json'],
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // Unused arguments named _x are a signature's, kept for its shape.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      // Its hits are async methods and callbacks that implement async interfaces (V2Device, openDevice, read/write) without awaiting.
      '@typescript-eslint/require-await': 'off',
    },
  },
);
