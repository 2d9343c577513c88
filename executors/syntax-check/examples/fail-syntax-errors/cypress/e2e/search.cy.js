describe('search', () => {
  it('finds a course', () => {
    cy.visit('/');
    cy.get('#query').type('compilers'
    cy.get('button[type=submit]').click();
    cy.contains('.result', 'Compilers').should('exist');
  });
});
