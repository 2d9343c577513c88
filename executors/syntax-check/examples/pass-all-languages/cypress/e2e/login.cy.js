describe('login page', () => {
  beforeEach(() => {
    cy.visit('/login.html');
  });

  it('greets a known user', () => {
    cy.get('#user').type('ada');
    cy.get('#password').type('lovelace');
    cy.get('form').submit();
    cy.contains('h1', `Welcome, ada`).should('be.visible');
  });
});
